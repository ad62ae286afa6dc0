//! Encryption at rest for Updraft: the master key, the keyring of wrapped data keys, sealed
//! (AES-256-GCM) records and keyed hashes, all on ring.
//!
//! It is what the core node's storage and WAL and the edge agent's buffer share to keep their
//! files unreadable without the master key. It is not a key server, and it never sees the
//! records' meaning: callers choose what to seal and what to hash.
//!
//! # Keys
//!
//! - The **master key** (32 random bytes) lives outside the data directory: in a key file
//!   (raw 32 bytes, or 64 hex digits; `core-node keys init` writes one with mode 0600) or in
//!   the environment variable [`MASTER_KEY_ENV`] (hex). It only wraps data keys.
//! - **Data keys** (32 random bytes each) live in `<data-dir>/keyring.json`, each wrapped
//!   (AES-256-GCM) by the master key, each with an id (`u32`, unique in the keyring, growing)
//!   and a [`Store`]: what it protects. Every store has its own keys; the newest key of a store
//!   seals new records, every older one still opens its old records (rotation,
//!   [`Keyring::rotate`]). [`Store::IndexHash`] is the key of keyed hashes ([`KeyedHash`]),
//!   which equality lookups depend on: it never rotates.
//!
//! # `keyring.json` (version 1)
//!
//! ```text
//! { "version": 1,
//!   "check": hex HMAC-SHA256(master key, "updraft keyring check"),   // tells a wrong master key
//!   "keys": [ { "id": 1, "store": "chunks", "created_ms": …,           // from a damaged file
//!               "wrapped": hex(nonce 12 ++ AES-256-GCM(master, data key) ++ tag 16) }, … ] }
//! ```
//!
//! A wrapped key's additional data is `"updraft-data-key" ++ id (u32 BE) ++ store name`, so a
//! key cannot be moved to another id or store. The file is replaced atomically (mode 0600):
//! a temporary file, fsynced, renamed over it, then the directory fsynced.
//!
//! **Re-wrapping** ([`Keyring::rewrap`]) wraps every data key again under a new master key
//! (new nonces, new `check`) and replaces the file the same way; the data keys, and so every
//! sealed record, stay as they are. Only the new master key opens the keyring afterwards.
//!
//! # Sealed record (version 1)
//!
//! ```text
//! [version u8 = 1][key id u32 BE][nonce 12 bytes][ciphertext][GCM tag 16 bytes]
//! ```
//!
//! The additional data is the first 5 bytes plus what the caller passes (the storage key of
//! the value, so a value cannot be moved to another key unnoticed). Overhead: [`OVERHEAD`]
//! bytes per record.
//!
//! # Nonces
//!
//! A nonce is never reused under one key: each [`Sealer`] draws a random 64-bit prefix from
//! the system's CSPRNG when it is made and counts a 32-bit counter after it; at the end of the
//! counter it draws a new prefix. Two prefixes of one key collide with probability about
//! n² / 2⁶⁵ for n prefixes drawn (n sealers or 2³² records each): far below AES-GCM's own
//! limits for any life of a node. Nothing is persisted, so a crash cannot roll a counter back.
//!
//! Compatibility: a new record layout or keyring layout gets a new version number; this crate
//! keeps reading the old ones.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Bytes of every key (master and data keys).
pub const KEY_BYTES: usize = 32;
/// Environment variable holding the master key (64 hex digits) when no key file is named.
pub const MASTER_KEY_ENV: &str = "UPDRAFT_MASTER_KEY";
/// The keyring's file name in a data directory.
pub const KEYRING_FILE: &str = "keyring.json";

const SEALED_VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Bytes a sealed record adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
const KEYRING_VERSION: u32 = 1;
const CHECK_LABEL: &[u8] = b"updraft keyring check";

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("invalid master key: {0}")]
    BadMasterKey(String),
    #[error("the master key does not open the keyring {path}: wrong master key")]
    WrongMasterKey { path: PathBuf },
    #[error("keyring {path}: {detail}")]
    Keyring { path: PathBuf, detail: String },
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sealed record names data key {0}, which the keyring does not hold")]
    UnknownKey(u32),
    #[error("sealed record does not authenticate: wrong key, or its bytes were changed")]
    Tampered,
    #[error("sealed record of {0} bytes is shorter than its header and tag")]
    Truncated(usize),
    #[error("sealed record has format version {0}; this build reads version 1")]
    UnsupportedVersion(u8),
    #[error("the system random number generator failed")]
    Random,
    #[error(
        "{path} is locked by a running process (a node or agent using this data directory): \
         stop it first"
    )]
    InUse { path: PathBuf },
}

fn io_err(path: &Path, source: std::io::Error) -> CryptError {
    CryptError::Io {
        path: path.to_owned(),
        source,
    }
}

fn random<const N: usize>() -> Result<[u8; N], CryptError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CryptError::Random)?;
    Ok(b)
}

fn aead_key(bytes: &[u8; KEY_BYTES]) -> Result<LessSafeKey, CryptError> {
    // A 32-byte slice is always a valid AES-256 key; the error arm is unreachable in practice.
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| CryptError::BadMasterKey("not an AES-256 key".into()))
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// The key that wraps every data key. Never stored in a data directory.
pub struct MasterKey {
    key: [u8; KEY_BYTES],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Result<Self, CryptError> {
        Ok(Self { key: random()? })
    }

    /// 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self, CryptError> {
        if let Ok(key) = <[u8; KEY_BYTES]>::try_from(bytes) {
            return Ok(Self { key });
        }
        let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
        let decoded = (text.len() == 2 * KEY_BYTES)
            .then(|| from_hex(text))
            .flatten()
            .and_then(|v| <[u8; KEY_BYTES]>::try_from(v).ok());
        match decoded {
            Some(key) => Ok(Self { key }),
            None => Err(CryptError::BadMasterKey(format!(
                "expected 32 raw bytes or 64 hex digits, found {} bytes",
                bytes.len()
            ))),
        }
    }

    pub fn read_file(path: &Path) -> Result<Self, CryptError> {
        let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
        Self::parse(&bytes).map_err(|e| match e {
            CryptError::BadMasterKey(d) => {
                CryptError::BadMasterKey(format!("{}: {d}", path.display()))
            }
            other => other,
        })
    }

    /// The key from `file` if one is named, else from [`MASTER_KEY_ENV`], else none.
    pub fn resolve(file: Option<&Path>) -> Result<Option<Self>, CryptError> {
        if let Some(path) = file {
            return Self::read_file(path).map(Some);
        }
        match std::env::var(MASTER_KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => Self::parse(text.trim().as_bytes())
                .map(Some)
                .map_err(|e| CryptError::BadMasterKey(format!("{MASTER_KEY_ENV}: {e}"))),
            _ => Ok(None),
        }
    }

    /// Writes the key as 64 hex digits to a new file (never over an existing one), mode 0600.
    pub fn write_new_file(&self, path: &Path) -> Result<(), CryptError> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| io_err(path, e))?;
        file.write_all(format!("{}\n", to_hex(&self.key)).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err(path, e))
    }

    fn check(&self) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
        to_hex(hmac::sign(&key, CHECK_LABEL).as_ref())
    }
}

/// What a data key protects. Each store has its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    /// Core: chunk values.
    Chunks,
    /// Core: series entries and the label dictionary.
    Index,
    /// Core: write-ahead log records.
    Wal,
    /// Core: the keyed hashes of label names and values in posting keys (never rotated).
    IndexHash,
    /// Edge: buffer records.
    Edge,
}

impl Store {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chunks => "chunks",
            Self::Index => "index",
            Self::Wal => "wal",
            Self::IndexHash => "index_hash",
            Self::Edge => "edge",
        }
    }

    /// Whether [`Keyring::rotate`] gives it a new key.
    pub fn rotates(self) -> bool {
        self != Self::IndexHash
    }
}

/// The stores of a core node's keyring.
pub const CORE_STORES: &[Store] = &[Store::Chunks, Store::Index, Store::Wal, Store::IndexHash];
/// The stores of an edge agent's keyring.
pub const EDGE_STORES: &[Store] = &[Store::Edge];

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    version: u32,
    check: String,
    keys: Vec<WrappedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WrappedKey {
    id: u32,
    store: Store,
    created_ms: u64,
    wrapped: String,
}

/// One data key as listed by [`Keyring::keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: u32,
    pub store: Store,
    pub created_ms: u64,
    /// The key that seals new records of its store.
    pub current: bool,
}

fn wrap_aad(id: u32, store: Store) -> Vec<u8> {
    let mut aad = b"updraft-data-key".to_vec();
    aad.extend_from_slice(&id.to_be_bytes());
    aad.extend_from_slice(store.as_str().as_bytes());
    aad
}

/// `nonce ++ AES-256-GCM(master, key) ++ tag`, with a fresh random nonce.
fn wrap(
    master: &LessSafeKey,
    id: u32,
    store: Store,
    key: &[u8; KEY_BYTES],
) -> Result<Vec<u8>, CryptError> {
    let nonce_bytes: [u8; NONCE_LEN] = random()?;
    let mut sealed = key.to_vec();
    master
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(wrap_aad(id, store)),
            &mut sealed,
        )
        .map_err(|_| CryptError::Random)?;
    let mut wrapped = nonce_bytes.to_vec();
    wrapped.extend_from_slice(&sealed);
    Ok(wrapped)
}

/// Takes an exclusive advisory lock (`flock`) on the lock file `path` of a running process
/// (the edge buffer's and the core WAL's `LOCK`, fjall's `lock`), so that nothing opens the
/// data directory while the lock is held. `Ok(None)` when the file does not exist (nothing
/// ever ran there); [`CryptError::InUse`] when a process holds it. The lock lasts as long as
/// the returned file stays open.
pub fn lock_if_present(path: &Path) -> Result<Option<fs::File>, CryptError> {
    let file = match fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Err(CryptError::InUse {
            path: path.to_owned(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_err(path, e)),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The data keys of one data directory, unwrapped.
pub struct Keyring {
    path: PathBuf,
    master: LessSafeKey,
    check: String,
    keys: Vec<(WrappedKey, [u8; KEY_BYTES])>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("keys", &self.keys())
            .finish()
    }
}

impl Keyring {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(KEYRING_FILE)
    }

    /// Whether `dir` holds a keyring, i.e. its data is encrypted.
    pub fn exists_in(dir: &Path) -> bool {
        Self::path_in(dir).exists()
    }

    /// Creates a keyring with one key per store in `dir` (which must not have one yet).
    pub fn create(dir: &Path, master: &MasterKey, stores: &[Store]) -> Result<Self, CryptError> {
        let path = Self::path_in(dir);
        if path.exists() {
            return Err(CryptError::Keyring {
                path,
                detail: "already exists".into(),
            });
        }
        let mut ring = Self {
            path,
            master: aead_key(&master.key)?,
            check: master.check(),
            keys: Vec::new(),
        };
        for store in stores {
            ring.add_key(*store)?;
        }
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        ring.save()?;
        Ok(ring)
    }

    /// Opens the keyring in `dir`; a wrong master key is [`CryptError::WrongMasterKey`].
    pub fn open(dir: &Path, master: &MasterKey) -> Result<Self, CryptError> {
        let path = Self::path_in(dir);
        let text = fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let bad = |detail: String| CryptError::Keyring {
            path: path.clone(),
            detail,
        };
        let file: KeyringFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if file.version != KEYRING_VERSION {
            return Err(bad(format!(
                "version {}; this build reads version {KEYRING_VERSION}",
                file.version
            )));
        }
        if file.check != master.check() {
            return Err(CryptError::WrongMasterKey { path });
        }
        let master_key = aead_key(&master.key)?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for entry in file.keys {
            let mut sealed = from_hex(&entry.wrapped)
                .ok_or_else(|| bad(format!("key {}: not hex", entry.id)))?;
            if sealed.len() != NONCE_LEN + KEY_BYTES + TAG_LEN {
                return Err(bad(format!("key {}: {} bytes", entry.id, sealed.len())));
            }
            let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN])
                .map_err(|_| bad("nonce".into()))?;
            let plain = master_key
                .open_in_place(
                    nonce,
                    Aad::from(wrap_aad(entry.id, entry.store)),
                    &mut sealed[NONCE_LEN..],
                )
                .map_err(|_| bad(format!("key {} does not authenticate", entry.id)))?;
            let key = <[u8; KEY_BYTES]>::try_from(&plain[..])
                .map_err(|_| bad(format!("key {}: wrong length", entry.id)))?;
            keys.push((entry, key));
        }
        Ok(Self {
            path,
            master: master_key,
            check: file.check,
            keys,
        })
    }

    /// Opens the keyring of `dir`, or creates one with a key per store if there is none.
    pub fn open_or_create(
        dir: &Path,
        master: &MasterKey,
        stores: &[Store],
    ) -> Result<Self, CryptError> {
        if Self::exists_in(dir) {
            let mut ring = Self::open(dir, master)?;
            let missing: Vec<Store> = stores
                .iter()
                .copied()
                .filter(|s| !ring.keys.iter().any(|(w, _)| w.store == *s))
                .collect();
            if !missing.is_empty() {
                for s in missing {
                    ring.add_key(s)?;
                }
                ring.save()?;
            }
            Ok(ring)
        } else {
            Self::create(dir, master, stores)
        }
    }

    fn add_key(&mut self, store: Store) -> Result<u32, CryptError> {
        let id = self.keys.iter().map(|(w, _)| w.id).max().unwrap_or(0) + 1;
        let key: [u8; KEY_BYTES] = random()?;
        let entry = WrappedKey {
            id,
            store,
            created_ms: now_ms(),
            wrapped: to_hex(&wrap(&self.master, id, store, &key)?),
        };
        self.keys.push((entry, key));
        Ok(id)
    }

    fn save(&self) -> Result<(), CryptError> {
        let keys: Vec<WrappedKey> = self.keys.iter().map(|(w, _)| w.clone()).collect();
        self.write_file(&self.check, keys)
    }

    /// Replaces the keyring file atomically: a temporary file, fsynced, renamed over the old
    /// one, then the directory fsynced. A crash leaves the old file or the new one, whole.
    fn write_file(&self, check: &str, keys: Vec<WrappedKey>) -> Result<(), CryptError> {
        let file = KeyringFile {
            version: KEYRING_VERSION,
            check: check.to_owned(),
            keys,
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| CryptError::Keyring {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let _ = fs::remove_file(&tmp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(dir, e))?;
        }
        Ok(())
    }

    /// Adds a new data key to every store that rotates and saves the keyring. Sealers made
    /// afterwards seal with the new keys; every old key stays, so old records stay readable.
    /// Returns the new keys.
    pub fn rotate(&mut self) -> Result<Vec<(Store, u32)>, CryptError> {
        let mut stores: Vec<Store> = Vec::new();
        for (w, _) in &self.keys {
            if w.store.rotates() && !stores.contains(&w.store) {
                stores.push(w.store);
            }
        }
        let mut added = Vec::new();
        for store in stores {
            added.push((store, self.add_key(store)?));
        }
        self.save()?;
        Ok(added)
    }

    /// Wraps every data key again under `new_master` and replaces the keyring file
    /// atomically (see [`Keyring::write_file`]); afterwards only `new_master` opens it. The
    /// data keys themselves do not change, so every sealed record stays readable. Each key
    /// gets a fresh random nonce. On an error the file and this keyring are left as they were.
    pub fn rewrap(&mut self, new_master: &MasterKey) -> Result<(), CryptError> {
        let master = aead_key(&new_master.key)?;
        let check = new_master.check();
        let mut entries = Vec::with_capacity(self.keys.len());
        for (w, key) in &self.keys {
            entries.push(WrappedKey {
                wrapped: to_hex(&wrap(&master, w.id, w.store, key)?),
                ..w.clone()
            });
        }
        self.write_file(&check, entries.clone())?;
        self.master = master;
        self.check = check;
        for ((w, _), new) in self.keys.iter_mut().zip(entries) {
            *w = new;
        }
        Ok(())
    }

    pub fn keys(&self) -> Vec<KeyInfo> {
        self.keys
            .iter()
            .map(|(w, _)| KeyInfo {
                id: w.id,
                store: w.store,
                created_ms: w.created_ms,
                current: self.current(w.store) == Some(w.id),
            })
            .collect()
    }

    fn current(&self, store: Store) -> Option<u32> {
        self.keys
            .iter()
            .filter(|(w, _)| w.store == store)
            .map(|(w, _)| w.id)
            .max()
    }

    fn missing(&self, store: Store) -> CryptError {
        CryptError::Keyring {
            path: self.path.clone(),
            detail: format!("no data key for store {}", store.as_str()),
        }
    }

    /// A sealer for `store`: seals with its newest key, opens with any of its keys.
    pub fn sealer(&self, store: Store) -> Result<Sealer, CryptError> {
        let current = self.current(store).ok_or_else(|| self.missing(store))?;
        let mut keys = HashMap::new();
        for (w, key) in self.keys.iter().filter(|(w, _)| w.store == store) {
            keys.insert(w.id, aead_key(key)?);
        }
        Sealer::new(current, keys)
    }

    /// The keyed hash of `store` (its newest key).
    pub fn hasher(&self, store: Store) -> Result<KeyedHash, CryptError> {
        let current = self.current(store).ok_or_else(|| self.missing(store))?;
        let key = self
            .keys
            .iter()
            .find(|(w, _)| w.id == current)
            .map(|(_, k)| *k)
            .ok_or_else(|| self.missing(store))?;
        Ok(KeyedHash::new(&key))
    }
}

struct NonceSource {
    prefix: [u8; 8],
    counter: u32,
}

struct SealerInner {
    current: u32,
    keys: HashMap<u32, LessSafeKey>,
    nonces: Mutex<NonceSource>,
}

/// Seals records with a store's current data key and opens records of any of its keys.
/// Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    inner: Arc<SealerInner>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("current", &self.inner.current)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    fn new(current: u32, keys: HashMap<u32, LessSafeKey>) -> Result<Self, CryptError> {
        Ok(Self {
            inner: Arc::new(SealerInner {
                current,
                keys,
                nonces: Mutex::new(NonceSource {
                    prefix: random()?,
                    counter: 0,
                }),
            }),
        })
    }

    /// A sealer over explicit keys, for tests and benchmarks: `current` seals.
    pub fn from_keys(current: u32, keys: &[(u32, [u8; KEY_BYTES])]) -> Result<Self, CryptError> {
        let mut map = HashMap::new();
        for (id, k) in keys {
            map.insert(*id, aead_key(k)?);
        }
        Self::new(current, map)
    }

    /// The id of the key that seals.
    pub fn current_key(&self) -> u32 {
        self.inner.current
    }

    fn next_nonce(&self) -> Result<[u8; NONCE_LEN], CryptError> {
        // Consistent after any panic: the fields are plain values, updated in place.
        let mut n = self
            .inner
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if n.counter == u32::MAX {
            n.prefix = random()?;
            n.counter = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&n.prefix);
        nonce[8..].copy_from_slice(&n.counter.to_be_bytes());
        n.counter += 1;
        Ok(nonce)
    }

    /// Seals `plain`; `aad` (e.g. the storage key of the value) must be passed again to open.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptError> {
        let nonce = self.next_nonce()?;
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&self.inner.current.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let key = self
            .inner
            .keys
            .get(&self.inner.current)
            .ok_or(CryptError::UnknownKey(self.inner.current))?;
        let mut full_aad = Vec::with_capacity(5 + aad.len());
        full_aad.extend_from_slice(&out[..5]);
        full_aad.extend_from_slice(aad);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(full_aad),
                &mut out[HEADER_LEN..],
            )
            .map_err(|_| CryptError::Tampered)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The key id a sealed record names, if it looks like one.
    pub fn key_of(sealed: &[u8]) -> Option<u32> {
        (sealed.len() >= OVERHEAD && sealed[0] == SEALED_VERSION)
            .then(|| sealed.get(1..5)?.try_into().ok().map(u32::from_be_bytes))
            .flatten()
    }

    /// Opens a record sealed by [`Sealer::seal`] under any key of this store.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
        if sealed.len() < OVERHEAD {
            return Err(CryptError::Truncated(sealed.len()));
        }
        if sealed[0] != SEALED_VERSION {
            return Err(CryptError::UnsupportedVersion(sealed[0]));
        }
        let id = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let key = self.inner.keys.get(&id).ok_or(CryptError::UnknownKey(id))?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[5..HEADER_LEN])
            .map_err(|_| CryptError::Truncated(sealed.len()))?;
        let mut full_aad = Vec::with_capacity(5 + aad.len());
        full_aad.extend_from_slice(&sealed[..5]);
        full_aad.extend_from_slice(aad);
        let mut buf = sealed[HEADER_LEN..].to_vec();
        let len = key
            .open_in_place(nonce, Aad::from(full_aad), &mut buf)
            .map_err(|_| CryptError::Tampered)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// HMAC-SHA256 truncated to 16 bytes: equal inputs give equal hashes, which lets an index
/// look up equality without holding the text in clear.
#[derive(Clone)]
pub struct KeyedHash {
    key: hmac::Key,
}

impl fmt::Debug for KeyedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyedHash(..)")
    }
}

/// Bytes of a [`KeyedHash`] output.
pub const HASH_BYTES: usize = 16;

impl KeyedHash {
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The hash of `parts`, each length-prefixed so that no two part lists collide.
    pub fn hash(&self, parts: &[&[u8]]) -> [u8; HASH_BYTES] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; HASH_BYTES];
        out.copy_from_slice(&tag.as_ref()[..HASH_BYTES]);
        out
    }
}

#[cfg(test)]
mod tests;

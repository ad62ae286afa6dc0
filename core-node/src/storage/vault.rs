//! Encryption at rest of storage: which bytes are sealed, and the hashed label index.
//!
//! With [`Encryption`] on, values are `crypt` sealed records (AES-256-GCM, key id in each
//! record; the storage key of the value is the additional data, so a value cannot be moved to
//! another key unnoticed):
//!
//! | keyspace | sealed with | what |
//! |---|---|---|
//! | `chunks~…` values | the `chunks` data key | each chunk or merged block, after the codec compressed it |
//! | `series` values | the `index` data key | postcard `(Tenant, Labels)` |
//! | `postings` dictionary values | the `index` data key | one label name or value |
//! | WAL records | the `wal` data key | one write batch: an agent's `WriteBatch` frame or an HTTP sample batch (see `super::record`, `seglog`) |
//!
//! Posting keys cannot be sealed (lookups need equal keys for equal labels), so label names
//! and values in them are replaced by keyed hashes, `H` = HMAC-SHA256 under the `index_hash`
//! key, truncated to 16 bytes:
//!
//! ```text
//! tenant 0xFF 'p' H("name", name) H("value", name, value) series_id   → empty (a posting)
//! tenant 0xFF 'n' H("name", name)                                     → sealed name
//! tenant 0xFF 'v' H("name", name) H("value", name, value)             → sealed value
//! ```
//!
//! An equality matcher hashes its name and value and reads one key range, as in clear. A regex
//! or negative matcher, and the label name and value listings, read the dictionary (`n`, `v`
//! entries) of the name, open each entry, match it in memory and then read the postings of
//! the hashes that matched. The dictionary entries of a name or value are written with the
//! first series that has it (the writer remembers which it wrote, and after a restart writes
//! each again once; rewriting one is harmless) and never removed (a series removed by
//! retention leaves its entries): listings therefore only report a name or value while at
//! least one posting of it exists.
//!
//! Left in clear: tenant names (in posting keys and in the names of the `chunks~<tenant>~<week>`
//! keyspaces), agent ids (in `meta`), series ids, timestamps in chunk keys (a chunk's first
//! timestamp and the day of a dirty mark), sequence numbers, and the sizes of values.

use crypt::{CryptError, KeyedHash, Keyring, Sealer, Store};
use foldhash::HashSet;
use protocols::{Labels, SeriesId};
use std::borrow::Cow;

/// The data keys of a core node's storage, taken from its keyring.
#[derive(Debug, Clone)]
pub struct Encryption {
    chunks: Sealer,
    index: Sealer,
    wal: Sealer,
    names: KeyedHash,
}

impl Encryption {
    pub fn from_keyring(ring: &Keyring) -> Result<Self, CryptError> {
        Ok(Self {
            chunks: ring.sealer(Store::Chunks)?,
            index: ring.sealer(Store::Index)?,
            wal: ring.sealer(Store::Wal)?,
            names: ring.hasher(Store::IndexHash)?,
        })
    }
}

/// Value of the `meta` key [`FORMAT_KEY`] in an encrypted store.
pub(crate) const SEALED_FORMAT: &[u8] = b"aes-256-gcm/1";
/// `meta` key recording that the store is encrypted (absent: plain).
pub(crate) const FORMAT_KEY: &[u8] = b"encryption";

/// A key and its value, for a write batch.
pub(crate) type KeyValue = (Vec<u8>, Vec<u8>);

const POSTING: u8 = b'p';
const NAME: u8 = b'n';
const VALUE: u8 = b'v';

/// How the storage writes and reads its sensitive bytes.
pub(crate) enum Vault {
    Plain,
    Sealed(Encryption),
}

impl Vault {
    pub fn is_sealed(&self) -> bool {
        matches!(self, Self::Sealed(_))
    }

    pub fn wal(&self) -> Option<Sealer> {
        match self {
            Self::Plain => None,
            Self::Sealed(e) => Some(e.wal.clone()),
        }
    }

    pub fn seal_chunk(&self, key: &[u8], bytes: Vec<u8>) -> Result<Vec<u8>, CryptError> {
        match self {
            Self::Plain => Ok(bytes),
            Self::Sealed(e) => e.chunks.seal(key, &bytes),
        }
    }

    pub fn open_chunk<'a>(&self, key: &[u8], v: &'a [u8]) -> Result<Cow<'a, [u8]>, CryptError> {
        match self {
            Self::Plain => Ok(Cow::Borrowed(v)),
            Self::Sealed(e) => e.chunks.open(key, v).map(Cow::Owned),
        }
    }

    pub fn seal_index(&self, key: &[u8], bytes: Vec<u8>) -> Result<Vec<u8>, CryptError> {
        match self {
            Self::Plain => Ok(bytes),
            Self::Sealed(e) => e.index.seal(key, &bytes),
        }
    }

    pub fn open_index<'a>(&self, key: &[u8], v: &'a [u8]) -> Result<Cow<'a, [u8]>, CryptError> {
        match self {
            Self::Plain => Ok(Cow::Borrowed(v)),
            Self::Sealed(e) => e.index.open(key, v).map(Cow::Owned),
        }
    }

    /// The posting key of (name, value, series).
    pub fn posting_key(&self, tenant: &str, name: &str, value: &str, id: SeriesId) -> Vec<u8> {
        match self {
            Self::Plain => super::keys::posting_key(tenant, name, value, id),
            Self::Sealed(_) => {
                let mut k = self.pair_prefix(tenant, name, value);
                k.extend_from_slice(&id.0.to_be_bytes());
                k
            }
        }
    }

    /// The prefix of every posting of (name, value).
    pub fn pair_prefix(&self, tenant: &str, name: &str, value: &str) -> Vec<u8> {
        match self {
            Self::Plain => super::keys::pair_prefix(tenant, name, value),
            Self::Sealed(e) => {
                let mut k = sealed_prefix(tenant, POSTING);
                k.extend_from_slice(&e.names.hash(&[b"name", name.as_bytes()]));
                k.extend_from_slice(&value_hash(&e.names, name, value));
                k
            }
        }
    }

    /// Sealed mode: the prefix of every posting of `name`.
    pub fn sealed_name_postings(e: &Encryption, tenant: &str, name: &str) -> Vec<u8> {
        let mut k = sealed_prefix(tenant, POSTING);
        k.extend_from_slice(&e.names.hash(&[b"name", name.as_bytes()]));
        k
    }

    /// Sealed mode: the prefix of the dictionary's names of `tenant` (`n` entries), after
    /// which each key holds a name hash.
    pub fn sealed_names(tenant: &str) -> Vec<u8> {
        sealed_prefix(tenant, NAME)
    }

    /// Sealed mode: the prefix of the dictionary's values of `name` (`v` entries), after
    /// which each key holds a value hash.
    pub fn sealed_values(e: &Encryption, tenant: &str, name: &str) -> Vec<u8> {
        let mut k = sealed_prefix(tenant, VALUE);
        k.extend_from_slice(&e.names.hash(&[b"name", name.as_bytes()]));
        k
    }

    /// Sealed mode: the posting prefix for a name hash (and optionally a value hash).
    pub fn sealed_postings_of(tenant: &str, name_hash: &[u8], value_hash: &[u8]) -> Vec<u8> {
        let mut k = sealed_prefix(tenant, POSTING);
        k.extend_from_slice(name_hash);
        k.extend_from_slice(value_hash);
        k
    }
    /// The index entries of a new series: one posting per label and, sealed, the dictionary
    /// entries of its label names and values. A dictionary entry whose id is in `written` (it
    /// is already in the store) is left out; the ids of the ones returned are added to
    /// `fresh`, for the caller to move into `written` once they are committed. Each label's
    /// keyed hashes are computed once, for its posting and its entries.
    pub fn index_entries(
        &self,
        tenant: &str,
        labels: &Labels,
        id: SeriesId,
        written: &HashSet<DictionaryId>,
        fresh: &mut HashSet<DictionaryId>,
    ) -> Result<Vec<KeyValue>, CryptError> {
        let Self::Sealed(e) = self else {
            return Ok(labels
                .iter()
                .map(|l| {
                    (
                        super::keys::posting_key(tenant, &l.name, &l.value, id),
                        Vec::new(),
                    )
                })
                .collect());
        };
        let mut entries = Vec::with_capacity(labels.len() * 3);
        // Only an answer without error may add to `fresh`: the caller drops the entries of a
        // series it could not stage.
        let mut new_ids = Vec::new();
        for l in labels.iter() {
            let name_hash = e.names.hash(&[b"name", l.name.as_bytes()]);
            let value_hash = value_hash(&e.names, &l.name, &l.value);
            let mut posting = sealed_prefix(tenant, POSTING);
            posting.extend_from_slice(&name_hash);
            posting.extend_from_slice(&value_hash);
            posting.extend_from_slice(&id.0.to_be_bytes());
            entries.push((posting, Vec::new()));

            let mut name_key = sealed_prefix(tenant, NAME);
            name_key.extend_from_slice(&name_hash);
            let mut value_key = sealed_prefix(tenant, VALUE);
            value_key.extend_from_slice(&name_hash);
            value_key.extend_from_slice(&value_hash);
            for (key, text) in [(name_key, &l.name), (value_key, &l.value)] {
                let entry = DictionaryId::of(&key);
                if written.contains(&entry) || fresh.contains(&entry) || new_ids.contains(&entry) {
                    continue;
                }
                let sealed = e.index.seal(&key, text.as_bytes())?;
                entries.push((key, sealed));
                new_ids.push(entry);
            }
        }
        fresh.extend(new_ids);
        Ok(entries)
    }
}

/// Names a dictionary entry (an xxh3-128 of its key) in the writer's record of the entries it
/// has written: 16 bytes instead of the key, and a collision as unlikely as one of the keyed
/// hashes the key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DictionaryId(u128);

impl DictionaryId {
    fn of(key: &[u8]) -> Self {
        Self(xxhash_rust::xxh3::xxh3_128(key))
    }
}

fn value_hash(names: &KeyedHash, name: &str, value: &str) -> [u8; crypt::HASH_BYTES] {
    names.hash(&[b"value", name.as_bytes(), value.as_bytes()])
}

fn sealed_prefix(tenant: &str, kind: u8) -> Vec<u8> {
    let mut k = super::keys::tenant_prefix(tenant);
    k.push(kind);
    k
}

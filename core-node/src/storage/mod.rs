//! Durable storage of series and their compressed chunks on fjall.
//!
//! # Layout (one fjall database under `<data-dir>/storage`)
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `series` | series id (u64 BE) | postcard `(Tenant, Labels)` |
//! | `postings` | `tenant 0xFF name 0xFF value 0xFF series_id` | empty |
//! | `chunks~<tenant>~<partition>` | series id (u64 BE) ++ first timestamp (i64, sign bit flipped, BE) ++ write sequence (u64 BE) | a `protocols::codec` chunk |
//! | `dirty` | series id ++ UTC day start (as above) | last write sequence (u64 BE) ++ chunks since the last merge (u32 BE) |
//! | `meta` | `agent-offset 0xFF agent_id` / `next-seq` / `last-flush` | epoch ++ sequence / u64 / ms since the epoch (all BE) |
//! | `meta` | `group-offset 0xFF group (u64 BE) 0xFF agent_id` / `group-applied 0xFF group` | a cluster shard group's agent offsets (as above) / its applied position (see [`group`]) |
//!
//! | `meta` | `encryption` (only in an encrypted store) | `aes-256-gcm/1` |
//!
//! The table shows the store in clear. **Encrypted at rest** (`StorageOptions::encryption`,
//! the node's `--master-key-file`), every value of `chunks~…` and `series`, and every WAL
//! record, is a `crypt` sealed record (AES-256-GCM, the data key's id in each record, the
//! storage key as additional data), and `postings` hold keyed hashes of label names and
//! values plus an encrypted dictionary of them: the layout, and what stays in clear, is in
//! [`vault`]. The `meta` key `encryption` marks such a store; a store is never opened in the
//! other mode (an encrypted one without keys, or a plain one holding data with keys), so the
//! two formats never mix.
//!
//! Keys are built in [`keys`]. Chunks live in one keyspace per tenant and week
//! ([`partitions`]); retention drops a tenant's partitions once they are wholly older than
//! its retention, so old data goes without tombstones; the series it left without any chunk
//! then leave the index (series, postings) too, so label listings forget them.
//! **Shards**: every series belongs to one of
//! `protocols::model::SHARD_COUNT` shards, the top bits of its id. `series`, `chunks` and
//! `dirty` keys start with the series id, so one shard is one contiguous key range in each:
//! it can be streamed to another node and dropped here by range. `postings` are derived from
//! `series` and are rebuilt on the receiving side. A chunk never spans two UTC days, so a series' chunks of one
//! day are one key range. Each head flush writes one chunk per (series, day) it holds, and the
//! [`compactor`] later merges each (series, day) into one sealed block, where the codec compresses best. Where chunks overlap, the one with the
//! higher write sequence wins a shared timestamp: the last write wins.
//!
//! # Write path
//!
//! [`Storage::submit`] queues an agent's [`WriteBatch`] (codec chunks) and
//! [`Storage::submit_samples`] a [`SampleBatch`] from the HTTP ingest APIs (decoded samples,
//! no agent) for the single writer thread (a bounded queue: a full queue is refused with
//! [`SubmitError::Busy`] rather than growing memory). The writer
//! takes every batch waiting (group commit), admits each (the agent's last applied
//! `(epoch, sequence)`, the limits and retention: the decisions that read settings, counters
//! or the clock, taken once; refused series leave the batch), appends the admitted ones to the
//! WAL and fsyncs it (the configured durability), commits the new series and postings to
//! fjall, appends the samples to the in-memory [`head`], and then answers them. The head is cut into chunks (one per series and
//! UTC day) in one fjall batch when it is full or old enough ([`StorageOptions::head_max_samples`],
//! [`StorageOptions::head_max_age`]); that batch also records the agents' offsets and how far
//! into the WAL it reaches, and a restart replays the WAL from there into the head again.
//! Applying is deterministic (it reads only the record and the state it is applied to; see
//! `writer::apply`) and idempotent: the stored offset makes a resent batch a no-op, and even
//! a re-applied one only adds samples that win over identical ones. Retention drops and
//! series removals are WAL records too. This is the shape a replicated log will take: a
//! leader admits and appends, every replica applies. Whether storage takes writes at all is
//! [`health`]'s: healthy, read-only (disk almost full) or failed.
//!
//! The compactor never writes itself: it sends its merged blocks to the writer as a replace
//! request, so every mutation is ordered by the one writer.
//!
//! # Read path
//!
//! [`Storage`] implements [`query::DataSource`]: matchers resolve through `postings` to series
//! ids, labels come from `series`, samples come from the head and a range scan of `chunks`
//! (every chunk's checksum verified as it is decoded) merged by timestamp. An instant
//! query's latest sample comes from the [`last_value`] cache when it knows it. Reads see a consistent fjall
//! snapshot per scan (a merge replaces its chunks atomically) and never wait for the writer.

mod checksum;
mod compactor;
pub(crate) mod group;
mod head;
mod health;
mod keys;
pub mod last_value;
pub mod partitions;
mod read;
pub(crate) mod record;
mod vault;
mod writer;

pub use checksum::ShardChecksum;
pub use health::StorageHealth;
pub use partitions::{Retention, parse_retention};
pub use vault::Encryption;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use protocols::wire::{AckOutcome, WriteBatch};
use protocols::{Labels, Sample, Tenant};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// How durable a write is before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// fsync the journal before acknowledging (survives power loss).
    #[default]
    Fsync,
    /// Hand the journal to the OS before acknowledging (survives a process crash, not a power
    /// loss). For benchmarks that compare against systems run without fsync.
    Buffered,
}

#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub durability: Durability,
    /// Batches that may wait for the writer before new ones are refused as busy.
    pub queue_batches: usize,
    /// fjall block cache size.
    pub cache_bytes: u64,
    pub compaction: CompactionOptions,
    pub limits: Limits,
    pub retention: Retention,
    /// Encryption at rest ([`vault`]); `None` stores everything in clear.
    pub encryption: Option<Encryption>,
    /// The [`head`] is cut into chunks once it holds this many samples (16 bytes each)...
    pub head_max_samples: usize,
    /// ...or once its oldest unflushed write is this old. The WAL keeps everything since the
    /// last head flush, so this also bounds how much a restart replays.
    pub head_max_age: Duration,
    /// Whether the writer flushes the head when storage is dropped (the default). Tests turn
    /// it off to reopen a directory as a crash would leave it: the head only in the WAL.
    pub flush_head_on_stop: bool,
    /// Below this many free bytes on the data directory's file system storage turns
    /// read-only (writes refused, retryable) until there is room again ([`health`]); 0 turns
    /// the guard off. Default [`DEFAULT_MIN_FREE_DISK_BYTES`].
    pub min_free_disk_bytes: u64,
    /// The clock admission and the retention pass read (never applying a record), and the
    /// caches' "now".
    pub clock: Clock,
    /// Memory of the last-value cache ([`last_value`]); 0 turns it off. Default
    /// [`last_value::DEFAULT_BUDGET_BYTES`].
    pub last_value_cache_bytes: u64,
    /// The range-result cache ([`crate::cache`]).
    pub range_cache: crate::cache::RangeCacheOptions,
    /// Whether the compactor drops expired partitions itself (a single node). A cluster's
    /// groups log their retention decisions instead (`Storage::group_retention`), so that
    /// every replica drops the same data at the same point of its log.
    pub local_retention: bool,
}

/// The default of [`StorageOptions::min_free_disk_bytes`]: room for a WAL segment (64 MiB),
/// fjall's journal (64 MiB) and the head flushes and merges that run while writes are refused.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 256 * 1024 * 1024;

/// Milliseconds since the Unix epoch, as storage reads them: the system clock, or a fixed
/// time in tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default()
        }))
    }

    /// A clock that reads `f()`.
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A clock that always reads `ms`.
    pub fn fixed(ms: i64) -> Self {
        Self(Arc::new(move || ms))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({} ms)", self.now_ms())
    }
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            queue_batches: 256,
            cache_bytes: 64 * 1024 * 1024,
            compaction: CompactionOptions::default(),
            limits: Limits::default(),
            retention: Retention::default(),
            encryption: None,
            head_max_samples: 4_000_000,
            head_max_age: Duration::from_secs(5 * 60),
            flush_head_on_stop: true,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            clock: Clock::system(),
            last_value_cache_bytes: last_value::DEFAULT_BUDGET_BYTES,
            range_cache: crate::cache::RangeCacheOptions::default(),
            local_retention: true,
        }
    }
}

/// Limits that keep one misbehaving writer from hurting the node. A series that breaks one is
/// refused (counted in `updraft_core_series_rejected_total{reason}` and reported in the
/// batch's acknowledgement); the rest of its batch is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Labels per series, `__name__` included.
    pub max_labels_per_series: usize,
    pub max_label_name_bytes: usize,
    pub max_label_value_bytes: usize,
    /// Series one tenant may create; series it already has keep being written.
    pub max_series_per_tenant: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_labels_per_series: 30,
            max_label_name_bytes: 128,
            max_label_value_bytes: 2048,
            max_series_per_tenant: 1_000_000,
        }
    }
}

/// When the compactor merges a (series, day)'s chunks into one block.
#[derive(Debug, Clone)]
pub struct CompactionOptions {
    /// Time between two passes over the dirty marks.
    pub interval: Duration,
    /// Merge a day that is still being written once this many chunks arrived since its last
    /// merge: bounds how many chunks a read of recent data decodes, while rewriting the
    /// growing block of the current day only every so often.
    pub merge_after_chunks: u32,
    /// Merge a day once its end is this far in the past, however few chunks it has: late
    /// samples seldom arrive later, and the sealed block compresses best.
    pub seal_after: Duration,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            merge_after_chunks: 32,
            seal_after: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine error: {0}")]
    Engine(#[from] fjall::Error),
    #[error("corrupt record in keyspace {keyspace}: {detail}")]
    Corrupt {
        keyspace: &'static str,
        detail: String,
    },
    #[error("storage writer has stopped")]
    WriterStopped,
    /// Storage refuses writes (read-only or failed; see [`health`]): retry later.
    #[error("storage refuses writes: {0}")]
    Unavailable(String),
    #[error("could not start a storage thread: {0}")]
    Thread(std::io::Error),
    #[error("write-ahead log: {0}")]
    Wal(#[from] seglog::LogError),
    #[error("encryption at rest: {0}")]
    Crypt(#[from] crypt::CryptError),
    /// The store's encryption does not match the options: opening it would mix formats.
    #[error("{0}")]
    EncryptionMismatch(String),
}

/// Why a batch was not queued. The batch is handed back so nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError<B = WriteBatch> {
    #[error("write queue is full")]
    Busy(Box<B>),
    #[error("storage writer has stopped")]
    Stopped(Box<B>),
    /// Storage is read-only (disk almost full) or failed: retry later, elsewhere or after a
    /// restart.
    #[error("storage refuses writes: {reason}")]
    Unavailable { batch: Box<B>, reason: String },
}

/// Samples from the HTTP ingest APIs (remote_write, line protocol): no agent and no offset,
/// so the writer applies every one. Each series' samples are ascending with one per
/// timestamp, and a label set appears once per batch. Logged as they are, not as codec
/// chunks (see [`record`]).
#[derive(Debug, Clone, Default)]
pub struct SampleBatch {
    pub tenant: Tenant,
    pub series: Vec<(Labels, Vec<Sample>)>,
}

impl SampleBatch {
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|(_, s)| s.len()).sum()
    }
}

impl<B> SubmitError<B> {
    fn map<C>(self, f: impl FnOnce(B) -> C) -> SubmitError<C> {
        match self {
            Self::Busy(b) => SubmitError::Busy(Box::new(f(*b))),
            Self::Stopped(b) => SubmitError::Stopped(Box::new(f(*b))),
            Self::Unavailable { batch, reason } => SubmitError::Unavailable {
                batch: Box::new(f(*batch)),
                reason,
            },
        }
    }
}

pub(crate) struct Keyspaces {
    db: Database,
    series: Keyspace,
    postings: Keyspace,
    chunks: partitions::Partitions,
    dirty: Keyspace,
    meta: Keyspace,
    vault: vault::Vault,
    head: head::Head,
    /// Series per tenant as the writer last committed them, for [`Storage::tenant_series`].
    tenant_series: Mutex<foldhash::HashMap<Tenant, u64>>,
    health: Arc<health::Health>,
    /// [`StorageOptions::clock`].
    clock: Clock,
    /// [`StorageOptions::retention`], for a cluster group's retention decisions.
    retention: Retention,
    /// Each series' latest sample, kept by the writer and read by instant queries.
    last_values: last_value::LastValues,
    /// Told of the writes and drops that may touch cached range results.
    range_cache: Arc<crate::cache::RangeCache>,
}

impl Keyspaces {
    /// A `series` entry read from the keyspace: its id, tenant and labels (opened when
    /// encrypted at rest).
    fn series_entry(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<(protocols::SeriesId, Tenant, Labels), StorageError> {
        let id = <[u8; 8]>::try_from(key)
            .map(|k| protocols::SeriesId(u64::from_be_bytes(k)))
            .map_err(|_| StorageError::Corrupt {
                keyspace: "series",
                detail: format!("key of {} bytes", key.len()),
            })?;
        let value = self.vault.open_index(&keys::series_key(id), value)?;
        let (tenant, labels): (Tenant, Labels) =
            postcard::from_bytes(&value).map_err(|e| StorageError::Corrupt {
                keyspace: "series",
                detail: format!("entry of {id}: {e}"),
            })?;
        Ok((id, tenant, labels))
    }

    /// Replaces the published series counts (the writer, after a group changed them).
    fn publish_tenant_series(&self, counts: &foldhash::HashMap<Tenant, u64>) {
        let mut published = self
            .tenant_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        published.clone_from(counts);
    }

    /// The tenant a series belongs to, from its `series` entry.
    fn tenant_of(
        &self,
        id: protocols::SeriesId,
    ) -> Result<Option<protocols::Tenant>, StorageError> {
        let Some(v) = self.series.get(keys::series_key(id))? else {
            return Ok(None);
        };
        let v = self.vault.open_index(&keys::series_key(id), &v)?;
        let (tenant, _): (protocols::Tenant, protocols::Labels) = postcard::from_bytes(&v)
            .map_err(|e| StorageError::Corrupt {
                keyspace: "series",
                detail: format!("entry of {id}: {e}"),
            })?;
        Ok(Some(tenant))
    }
}

/// The storage keys of the data directory `dir`: `None` when it is not encrypted and no master
/// key is given (`master_key_file`, else the `UPDRAFT_MASTER_KEY` environment variable). With a
/// master key, a directory without a keyring gets one, unless it already holds plain storage.
/// Errors are [`StorageError::EncryptionMismatch`] (a node should exit with status 2) and
/// [`StorageError::Crypt`] (bad or wrong master key, damaged keyring).
pub fn load_encryption(
    dir: &Path,
    master_key_file: Option<&Path>,
) -> Result<Option<Encryption>, StorageError> {
    let master = crypt::MasterKey::resolve(master_key_file)?;
    let has_keyring = crypt::Keyring::exists_in(dir);
    match (master, has_keyring) {
        (None, false) => Ok(None),
        (None, true) => Err(StorageError::EncryptionMismatch(format!(
            "data directory {} is encrypted at rest: a master key is needed (--master-key-file \
             or {})",
            dir.display(),
            crypt::MASTER_KEY_ENV
        ))),
        (Some(master), true) => {
            let ring = crypt::Keyring::open(dir, &master)?;
            Ok(Some(Encryption::from_keyring(&ring)?))
        }
        (Some(master), false) => {
            if dir.join("storage").exists() || dir.join("wal").exists() {
                return Err(StorageError::EncryptionMismatch(format!(
                    "data directory {} holds unencrypted storage; refusing to mix it with \
                     encrypted data (start without a master key, or use an empty directory)",
                    dir.display()
                )));
            }
            let ring = crypt::Keyring::create(dir, &master, crypt::CORE_STORES)?;
            tracing::info!(keyring = %crypt::Keyring::path_in(dir).display(), "created the data keys for encryption at rest");
            Ok(Some(Encryption::from_keyring(&ring)?))
        }
    }
}

/// Refuses to open an encrypted store without keys, or a plain one that holds data with keys;
/// marks a new store as encrypted.
fn check_format(ks: &Keyspaces) -> Result<(), StorageError> {
    let marked = ks.meta.get(vault::FORMAT_KEY)?.is_some();
    match (marked, ks.vault.is_sealed()) {
        (true, true) | (false, false) => Ok(()),
        (true, false) => Err(StorageError::EncryptionMismatch(
            "storage is encrypted at rest: a master key is needed (--master-key-file or \
             UPDRAFT_MASTER_KEY)"
                .into(),
        )),
        (false, true) => {
            let holds_data =
                !ks.series.is_empty()? || !ks.chunks.all().is_empty() || !ks.meta.is_empty()?;
            if holds_data {
                return Err(StorageError::EncryptionMismatch(
                    "storage holds unencrypted data; refusing to mix it with encrypted data \
                     (start without a master key, or with an empty data directory)"
                        .into(),
                ));
            }
            ks.meta.insert(vault::FORMAT_KEY, vault::SEALED_FORMAT)?;
            Ok(())
        }
    }
}

/// Handle to the node's storage; cheap to clone. When the last handle is dropped, the
/// compactor and the writer stop (after the writer has committed what it took) and are joined,
/// so the directory can be opened again at once.
#[derive(Clone)]
pub struct Storage {
    ks: Arc<Keyspaces>,
    shared: Arc<Shared>,
}

struct Shared {
    queue: Option<mpsc::SyncSender<writer::Request>>,
    /// Dropping it tells the compactor to stop.
    stop_compactor: Option<mpsc::Sender<()>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Order matters: the compactor holds a queue sender; once it has exited and ours is
        // dropped too, the writer's queue disconnects and it finishes.
        self.stop_compactor.take();
        self.queue.take();
        let threads = match self.threads.get_mut() {
            Ok(t) => std::mem::take(t),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The answer to one submitted batch, resolved once the outcome is final.
pub type Pending = oneshot::Receiver<Result<AckOutcome, Arc<StorageError>>>;

impl Storage {
    /// Opens (or creates) storage under `dir` and starts the writer thread.
    pub fn open(dir: &Path, options: StorageOptions) -> Result<Self, StorageError> {
        let db = Database::builder(dir.join("storage"))
            .cache_size(options.cache_bytes)
            // Our WAL is the durable copy of recent writes; fjall's own journal only needs to
            // cover its memtables, so it is kept at fjall's minimum instead of 512 MiB.
            .max_journaling_size(64 * 1024 * 1024)
            .open()?;
        let ks = Arc::new(Keyspaces {
            series: db.keyspace("series", KeyspaceCreateOptions::default)?,
            postings: db.keyspace("postings", KeyspaceCreateOptions::default)?,
            chunks: partitions::Partitions::open(&db)?,
            dirty: db.keyspace("dirty", KeyspaceCreateOptions::default)?,
            meta: db.keyspace("meta", KeyspaceCreateOptions::default)?,
            vault: match options.encryption.clone() {
                Some(e) => vault::Vault::Sealed(e),
                None => vault::Vault::Plain,
            },
            head: head::Head::new(),
            tenant_series: Mutex::default(),
            health: Arc::new(health::Health::new()),
            clock: options.clock.clone(),
            retention: options.retention.clone(),
            last_values: last_value::LastValues::new(options.last_value_cache_bytes),
            range_cache: Arc::new(crate::cache::RangeCache::new(
                &options.range_cache,
                options.clock.clone(),
            )),
            db,
        });
        last_value::register_metrics(options.last_value_cache_bytes);
        crate::cache::register_metrics(&options.range_cache);
        check_format(&ks)?;
        let (queue, writer_thread) = writer::start(ks.clone(), dir, &options)?;
        let (stop_tx, stop_rx) = mpsc::channel();
        let compactor_thread = compactor::start(
            ks.clone(),
            queue.clone(),
            stop_rx,
            options.compaction.clone(),
            if options.local_retention {
                options.retention.clone()
            } else {
                Retention::default()
            },
        )?;
        Ok(Self {
            ks,
            shared: Arc::new(Shared {
                queue: Some(queue),
                stop_compactor: Some(stop_tx),
                threads: Mutex::new(vec![compactor_thread, writer_thread]),
            }),
        })
    }

    /// Queues a batch for the writer. The returned receiver resolves after the batch is
    /// durable (or refused); dropping it does not cancel the write.
    pub fn submit(&self, batch: WriteBatch) -> Result<Pending, SubmitError> {
        self.queue_write(record::Batch::Chunks(batch)).map_err(|e| {
            e.map(|b| match b {
                record::Batch::Chunks(b) => b,
                // `queue_write` hands back the batch it was given.
                record::Batch::Samples(_) => unreachable!("a chunk batch was queued"),
            })
        })
    }

    /// As [`Storage::submit`], for samples from the HTTP ingest APIs.
    pub fn submit_samples(&self, batch: SampleBatch) -> Result<Pending, SubmitError<SampleBatch>> {
        self.queue_write(record::Batch::Samples(batch))
            .map_err(|e| {
                e.map(|b| match b {
                    record::Batch::Samples(b) => b,
                    // `queue_write` hands back the batch it was given.
                    record::Batch::Chunks(_) => unreachable!("a sample batch was queued"),
                })
            })
    }

    fn queue_write(&self, batch: record::Batch) -> Result<Pending, SubmitError<record::Batch>> {
        let (tx, rx) = oneshot::channel();
        let Some(queue) = &self.shared.queue else {
            return Err(SubmitError::Stopped(Box::new(batch)));
        };
        if let Some(reason) = self.ks.health.get().reason() {
            return Err(SubmitError::Unavailable {
                batch: Box::new(batch),
                reason: reason.to_owned(),
            });
        }
        let give_back = |r: writer::Request| match r {
            writer::Request::Write { batch, .. } => Box::new(batch),
            // The request was built below as a write; no other kind comes back here.
            _ => unreachable!("submit only sends writes"),
        };
        match queue.try_send(writer::Request::Write { batch, reply: tx }) {
            Ok(()) => Ok(rx),
            Err(mpsc::TrySendError::Full(r)) => Err(SubmitError::Busy(give_back(r))),
            Err(mpsc::TrySendError::Disconnected(r)) => Err(SubmitError::Stopped(give_back(r))),
        }
    }

    /// The range-result cache this storage keeps current (the HTTP API answers
    /// `query_range` through it).
    pub fn range_cache(&self) -> Arc<crate::cache::RangeCache> {
        Arc::clone(&self.ks.range_cache)
    }

    /// Entries of the last-value cache and the lookups it answered since start.
    pub fn last_value_stats(&self) -> (usize, u64) {
        (self.ks.last_values.len(), self.ks.last_values.hits())
    }

    /// Whether storage takes writes, and why not ([`health`]).
    pub fn health(&self) -> StorageHealth {
        self.ks.health.get()
    }

    /// Resolves on every change of [`Storage::health`]: the node's supervisor waits on it.
    pub fn watch_health(&self) -> tokio::sync::watch::Receiver<StorageHealth> {
        self.ks.health.subscribe()
    }

    /// Logs and applies a record admitted elsewhere, as it is (see `writer::Request::Apply`);
    /// returns the samples stored, or the partitions or series a retention record removed.
    /// Blocks until the record is durable and applied.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "tests today; a cluster follower's apply path next"
        )
    )]
    pub(crate) fn apply_admitted(&self, record: record::Record) -> Result<usize, StorageError> {
        let Some(queue) = &self.shared.queue else {
            return Err(StorageError::WriterStopped);
        };
        let (tx, rx) = mpsc::channel();
        queue
            .send(writer::Request::Apply { record, reply: tx })
            .map_err(|_| StorageError::WriterStopped)?;
        rx.recv()
            .map_err(|_| StorageError::WriterStopped)?
            // The writer shares one error among a group's requests; this one is ours alone.
            .map_err(|e| {
                Arc::try_unwrap(e)
                    .unwrap_or_else(|shared| StorageError::Unavailable(shared.to_string()))
            })
    }

    /// Series `tenant` has (as of the writer's last commit): what `--max-series-per-tenant`
    /// counts.
    pub fn tenant_series(&self, tenant: &Tenant) -> u64 {
        self.ks
            .tenant_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    /// Runs compaction passes until nothing is due under `options` (for tests and benchmarks:
    /// `seal_after: 0` merges every dirty day now). Returns the number of days merged.
    pub fn compact_now(&self, options: &CompactionOptions) -> Result<usize, StorageError> {
        // The head's samples become chunks first, so the merges cover everything written.
        self.checkpoint()?;
        let Some(queue) = &self.shared.queue else {
            return Err(StorageError::WriterStopped);
        };
        let mut total = 0;
        loop {
            match compactor::pass(&self.ks, queue, options, self.ks.clock.now_ms())? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Settles storage on disk, for measurements and before a backup: checkpoints (fjall
    /// durable, WAL trimmed), flushes every memtable and compacts every table, so that
    /// replaced chunks and the journal stop taking space. Blocks for as long as that takes;
    /// writes keep flowing meanwhile.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.checkpoint()?;
        let mut keyspaces = vec![
            self.ks.series.clone(),
            self.ks.postings.clone(),
            self.ks.dirty.clone(),
            self.ks.meta.clone(),
        ];
        for (tenant, index) in self.ks.chunks.all() {
            keyspaces.extend(self.ks.chunks.get(&tenant, index));
        }
        for ks in keyspaces {
            ks.rotate_memtable_and_wait()?;
            ks.major_compact()?;
        }
        self.release_replaced_tables()?;
        self.ks.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    /// Lets fjall delete the table files that compactions replaced. fjall keeps every
    /// replaced version of a keyspace (and so its files) until its MVCC watermark passes
    /// it, and it advances that watermark only when a memtable is sealed or every 10,000
    /// closed snapshots: after a major compaction on a quiet node the old files stay until
    /// the next write burst. Sealing a one-key memtable of `meta` advances the watermark
    /// and runs the version GC of every keyspace. The key is harmless: it records when
    /// storage was last flushed.
    /// Asks the writer to flush the head and checkpoint (fjall durable, WAL trimmed); returns
    /// once it has.
    fn checkpoint(&self) -> Result<(), StorageError> {
        let Some(queue) = &self.shared.queue else {
            return Err(StorageError::WriterStopped);
        };
        let (tx, rx) = mpsc::channel();
        queue
            .send(writer::Request::Checkpoint { reply: tx })
            .map_err(|_| StorageError::WriterStopped)?;
        rx.recv()
            .map_err(|_| StorageError::WriterStopped)?
            .map_err(|e| StorageError::Corrupt {
                keyspace: "meta",
                detail: format!("checkpoint failed: {e}"),
            })
    }

    fn release_replaced_tables(&self) -> Result<(), StorageError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.ks
            .meta
            .insert(keys::LAST_FLUSH_KEY, now_ms.to_be_bytes())?;
        self.ks.meta.rotate_memtable_and_wait()?;
        Ok(())
    }

    /// The last `(epoch, sequence)` applied for `agent`, as committed.
    pub fn agent_offset(&self, agent: &str) -> Result<Option<(u64, u64)>, StorageError> {
        // The head knows batches applied since the last flush; fjall's keys lag behind it.
        if let Some(applied) = self.ks.head.agent_offset(agent) {
            return Ok(Some(applied));
        }
        match self.ks.meta.get(keys::agent_offset_key(agent))? {
            Some(v) => writer::decode_offset(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes on disk (journal and tables).
    pub fn disk_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.ks.db.disk_space()?)
    }

    /// Number of series stored (approximate: an LSM count without a full scan).
    pub fn approximate_series(&self) -> usize {
        self.ks.series.approximate_len()
    }
}

#[cfg(test)]
mod determinism_tests;
#[cfg(test)]
mod tests;

//! Durable storage of series and samples on fjall.
//!
//! # Layout (one fjall database under `<data-dir>/storage`)
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `series` | series id (u64 BE) | postcard `(Tenant, Labels)` |
//! | `postings` | `tenant 0xFF name 0xFF value 0xFF series_id` | empty |
//! | `samples` | series id (u64 BE) ++ timestamp (i64, sign bit flipped, BE) | f64 bits (u64 LE) |
//! | `meta` | `agent-offset 0xFF agent_id` | epoch (u64 BE) ++ sequence (u64 BE) |
//!
//! Keys are built in [`keys`]. Samples are keyed by series first, so every series' samples are
//! one contiguous range; a later version stores compressed chunks per series and time
//! partition and prefixes keys with a shard number so a shard can be streamed elsewhere.
//!
//! # Write path
//!
//! [`Storage::submit`] queues a [`WriteBatch`] for the single writer thread (a bounded queue:
//! a full queue is refused with [`SubmitError::Busy`] rather than growing memory). The writer
//! takes every batch waiting (group commit), checks each against the agent's last applied
//! `(epoch, sequence)`, turns the new ones into one fjall write batch — new series, postings,
//! samples, and the agents' new offsets — and commits it through fjall's journal with the
//! configured durability (default: fsync) before it answers any of them. Applying is
//! deterministic and idempotent: a sample is a key `(series, timestamp)`, so applying the same
//! batch twice stores the same bytes (the last write for a timestamp wins), and the stored
//! offset makes a resent batch a no-op. This is the shape a replicated log will take: append
//! the batch, then apply it.
//!
//! # Read path
//!
//! [`Storage`] implements [`query::DataSource`]: matchers resolve through `postings` to series
//! ids, labels come from `series`, samples are a range scan of `samples`. Reads see a
//! consistent fjall snapshot per call and never wait for the writer.

mod keys;
mod read;
mod writer;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use protocols::wire::{AckOutcome, WriteBatch};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
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

impl Durability {
    fn persist_mode(self) -> PersistMode {
        match self {
            Self::Fsync => PersistMode::SyncAll,
            Self::Buffered => PersistMode::Buffer,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub durability: Durability,
    /// Batches that may wait for the writer before new ones are refused as busy.
    pub queue_batches: usize,
    /// fjall block cache size.
    pub cache_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            queue_batches: 256,
            cache_bytes: 64 * 1024 * 1024,
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
}

/// Why a batch was not queued. The batch is handed back so nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("write queue is full")]
    Busy(Box<WriteBatch>),
    #[error("storage writer has stopped")]
    Stopped(Box<WriteBatch>),
}

pub(crate) struct Keyspaces {
    db: Database,
    series: Keyspace,
    postings: Keyspace,
    samples: Keyspace,
    meta: Keyspace,
}

/// Handle to the node's storage; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    ks: Arc<Keyspaces>,
    queue: mpsc::SyncSender<writer::Request>,
}

/// The answer to one submitted batch, resolved once the outcome is final.
pub type Pending = oneshot::Receiver<Result<AckOutcome, Arc<StorageError>>>;

impl Storage {
    /// Opens (or creates) storage under `dir` and starts the writer thread.
    pub fn open(dir: &Path, options: StorageOptions) -> Result<Self, StorageError> {
        let db = Database::builder(dir.join("storage"))
            .cache_size(options.cache_bytes)
            .open()?;
        let ks = Arc::new(Keyspaces {
            series: db.keyspace("series", KeyspaceCreateOptions::default)?,
            postings: db.keyspace("postings", KeyspaceCreateOptions::default)?,
            samples: db.keyspace("samples", KeyspaceCreateOptions::default)?,
            meta: db.keyspace("meta", KeyspaceCreateOptions::default)?,
            db,
        });
        let queue = writer::start(ks.clone(), options)?;
        Ok(Self { ks, queue })
    }

    /// Queues a batch for the writer. The returned receiver resolves after the batch is
    /// durable (or refused); dropping it does not cancel the write.
    pub fn submit(&self, batch: WriteBatch) -> Result<Pending, SubmitError> {
        let (tx, rx) = oneshot::channel();
        match self.queue.try_send(writer::Request { batch, reply: tx }) {
            Ok(()) => Ok(rx),
            Err(mpsc::TrySendError::Full(r)) => Err(SubmitError::Busy(Box::new(r.batch))),
            Err(mpsc::TrySendError::Disconnected(r)) => {
                Err(SubmitError::Stopped(Box::new(r.batch)))
            }
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
mod tests;

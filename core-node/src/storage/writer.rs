//! The single writer thread: group commit of queued batches and of the compactor's merges
//! (see the module docs of [`super`] for the protocol).
//!
//! # Durability: the write-ahead log and the head
//!
//! Every write batch is appended to the WAL (a [`seglog`] log under `<data-dir>/wal`, each
//! record one batch as [`super::record`] lays it out: an agent's `WriteBatch` wire frame or an
//! HTTP sample batch) and the group is fsynced once before anything is
//! applied. Applying a group commits its new series (entries and postings) to fjall without an
//! fsync of its own and appends its samples to the [`super::head`]; then the batches are
//! acknowledged. A *head flush* writes the whole head as chunks in one fjall batch, together
//! with the dirty marks, the agents' offsets, the next write sequence and `wal-applied`, the
//! end of the last WAL record it covers: so fjall's chunks, offsets and sequence are always
//! exactly "the WAL up to `wal-applied`". Every [`CHECKPOINT_BYTES`] of log or
//! [`CHECKPOINT_INTERVAL`], the writer persists fjall (fsync) and acknowledges the WAL up to
//! the last head flush, which deletes old WAL segments. On open, every WAL record after
//! `wal-applied` is applied again, into the head as the first time, and the head is flushed:
//! duplicates are judged against the offsets as of that flush, as they were then, so a crash
//! at any point loses nothing that was acknowledged. (Series entries may already be in fjall
//! from before the crash; staging one again is skipped.) The WAL's recovery truncates a torn
//! tail at the last good record and skips a damaged record in the middle, counting the bytes
//! (`updraft_core_wal_corrupt_bytes_total`) and logging; everything before stays. Compaction
//! merges are not logged: they are derived data, and losing one only leaves the day dirty for
//! the next pass.

use super::SampleBatch;
use super::partitions::{self, Retention};
use super::record::Batch;
use super::vault::DictionaryId;
use super::{Durability, Keyspaces, Limits, StorageError, StorageOptions, keys};
use fjall::Keyspace;
use fjall::{OwnedWriteBatch, PersistMode};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use protocols::wire::{AckOutcome, WriteBatch};
use protocols::{Labels, Sample, SeriesId, Tenant, codec};
use seglog::{LogOptions, LogReader, LogWriter, Offset};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// WAL bytes between two checkpoints.
const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Longest time between two checkpoints while writes arrive.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// WAL segment size.
const WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Most samples in one chunk a head flush writes.
const MAX_CHUNK_SAMPLES: usize = 65_536;
/// How often an idle writer checks whether the head is due for a flush.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// At a checkpoint that leaves nothing unflushed, the WAL starts a new segment when the current
/// one holds at least this much (so the old one can be deleted); less stays where it is.
const WAL_ROLL_BYTES: u64 = 1024 * 1024;
/// Most samples one group commit gathers before it commits.
const GROUP_MAX_SAMPLES: usize = 500_000;

/// Encrypted dictionary entries the writer remembers having written (16 bytes each).
const DICTIONARY_MEMORY: usize = 1 << 20;
const NEXT_SEQ_KEY: &[u8] = b"next-seq";
/// The WAL epoch and the end of the last WAL record whose batch fjall holds: written in the
/// same fjall batch as the data, so fjall's state is always exactly "the WAL up to here".
const WAL_APPLIED_KEY: &[u8] = b"wal-applied";

fn wal_position(epoch: seglog::Epoch, end: Offset) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&epoch.0.to_be_bytes());
    v[8..].copy_from_slice(&end.0.to_be_bytes());
    v
}

pub(crate) enum Request {
    Write {
        batch: Batch,
        reply: oneshot::Sender<Result<AckOutcome, Arc<StorageError>>>,
    },
    /// From the compactor: for each plan, replace the chunks `remove` of one (series, day) by
    /// `add`.
    /// One reply for all of `plans`, each of a different (series, day).
    Replace {
        plans: Vec<Replace>,
        reply: mpsc::Sender<Result<(), Arc<StorageError>>>,
    },
    /// Flush the head and checkpoint now: fjall made durable, the WAL acknowledged up to what
    /// it holds.
    Checkpoint {
        reply: mpsc::Sender<Result<(), Arc<StorageError>>>,
    },
    /// From the retention pass: drop one partition of one tenant.
    DropPartition {
        tenant: Tenant,
        index: i64,
        reply: mpsc::Sender<Result<(), Arc<StorageError>>>,
    },
    /// From the retention pass: remove these series of `tenant` from the index if they still
    /// hold no chunk. Always committed in a group of its own (see [`Writer::run`]), so no
    /// write of the same group can depend on the series it removes. Answers how many went.
    ForgetSeries {
        tenant: Tenant,
        ids: Vec<SeriesId>,
        reply: mpsc::Sender<Result<usize, Arc<StorageError>>>,
    },
}

/// A merge the compactor computed from a snapshot of one (series, day).
pub(crate) struct Replace {
    pub series: SeriesId,
    pub day_start: i64,
    /// The partition holding the day; `None` when it no longer exists.
    pub partition: Option<Keyspace>,
    /// Every chunk key of the (series, day) in the snapshot.
    pub remove: Vec<[u8; 24]>,
    /// The merged blocks; their sequence is the highest of `remove`, so chunks written after
    /// the snapshot still win over them.
    pub add: Vec<([u8; 24], Vec<u8>)>,
    /// The dirty mark's last sequence when the snapshot was taken.
    pub seen_seq: u64,
}

/// A (series, day) with chunks written since its last merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dirty {
    pub last_seq: u64,
    pub chunks: u32,
}

impl Dirty {
    pub fn encode(self) -> [u8; 12] {
        let mut v = [0u8; 12];
        v[..8].copy_from_slice(&self.last_seq.to_be_bytes());
        v[8..].copy_from_slice(&self.chunks.to_be_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Option<Self> {
        Some(Self {
            last_seq: u64::from_be_bytes(v.get(..8)?.try_into().ok()?),
            chunks: u32::from_be_bytes(v.get(8..12)?.try_into().ok()?),
        })
    }
}

struct Writer {
    ks: Arc<Keyspaces>,
    /// fsync the WAL before acknowledging (`Durability::Fsync`).
    fsync: bool,
    wal: LogWriter,
    wal_reader: LogReader,
    /// End of the last WAL record applied (to fjall and the head).
    logged_end: Offset,
    /// Where fjall's state ends in the WAL (written as `wal-applied` at each head flush):
    /// records up to here are wholly in fjall, the head holds the samples of those after.
    flushed_end: Offset,
    last_checkpoint: Instant,
    /// When the oldest write the head holds was applied; `None` after a flush.
    unflushed_since: Option<Instant>,
    /// Agents whose offset changed since the last head flush.
    unflushed_agents: HashSet<String>,
    head_max_samples: usize,
    head_max_age: Duration,
    flush_head_on_stop: bool,
    /// Series whose `series` and `postings` entries are already committed.
    known: HashSet<SeriesId>,
    /// Last applied (epoch, sequence) per agent, as committed.
    offsets: HashMap<String, (u64, u64)>,
    /// Dirty marks as committed.
    dirty: HashMap<(SeriesId, i64), Dirty>,
    /// Next chunk write sequence, as committed.
    next_seq: u64,
    limits: Limits,
    /// Series per tenant, as committed.
    tenant_series: HashMap<Tenant, u64>,
    retention: Retention,
    /// Encrypted dictionary entries committed since the start (see [`super::vault`]): a name
    /// or value shared by many series is sealed and written once, not with every series.
    /// Emptied past [`DICTIONARY_MEMORY`] entries, after which each is written once more.
    dictionary: HashSet<DictionaryId>,
}

fn corrupt(keyspace: &'static str, detail: String) -> StorageError {
    StorageError::Corrupt { keyspace, detail }
}

pub(super) fn start(
    ks: Arc<Keyspaces>,
    dir: &Path,
    options: &StorageOptions,
) -> Result<(mpsc::SyncSender<Request>, JoinHandle<()>), StorageError> {
    let mut known = HashSet::new();
    let mut tenant_series: HashMap<Tenant, u64> = HashMap::new();
    for kv in ks.series.iter() {
        let (key, value) = kv.into_inner()?;
        let id: [u8; 8] = key
            .as_ref()
            .try_into()
            .map_err(|_| corrupt("series", format!("key of {} bytes", key.len())))?;
        let value = ks.vault.open_index(&key, &value)?;
        let (tenant, _): (Tenant, Labels) = postcard::from_bytes(&value).map_err(|e| {
            corrupt(
                "series",
                format!("entry of {}: {e}", u64::from_be_bytes(id)),
            )
        })?;
        *tenant_series.entry(tenant).or_default() += 1;
        known.insert(SeriesId(u64::from_be_bytes(id)));
    }
    let mut offsets = HashMap::new();
    let prefix = keys::agent_offset_key("");
    for kv in ks.meta.prefix(&prefix) {
        let (k, v) = kv.into_inner()?;
        let agent = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        offsets.insert(agent, decode_offset(&v)?);
    }
    let mut dirty = HashMap::new();
    for kv in ks.dirty.iter() {
        let (k, v) = kv.into_inner()?;
        let key = keys::decode_dirty_key(&k)
            .ok_or_else(|| corrupt("dirty", format!("key of {} bytes", k.len())))?;
        let mark = Dirty::decode(&v)
            .ok_or_else(|| corrupt("dirty", format!("value of {} bytes", v.len())))?;
        dirty.insert(key, mark);
    }
    let next_seq = match ks.meta.get(NEXT_SEQ_KEY)? {
        Some(v) => u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt("meta", format!("next-seq of {} bytes", v.len())))?,
        ),
        None => 0,
    };
    metrics::gauge!("updraft_core_series").set(known.len() as f64);
    ks.head.set_agent_offsets(offsets.clone());
    tracing::info!(
        series = known.len(),
        agents = offsets.len(),
        dirty = dirty.len(),
        next_seq,
        "storage opened"
    );

    let (wal, wal_reader, recovery) = seglog::open_encrypted(
        &dir.join("wal"),
        LogOptions {
            segment_max_bytes: WAL_SEGMENT_BYTES,
        },
        ks.vault.wal(),
    )?;
    if recovery.corrupt_bytes > 0 {
        metrics::counter!("updraft_core_wal_corrupt_bytes_total").increment(recovery.corrupt_bytes);
        tracing::error!(
            corrupt_bytes = recovery.corrupt_bytes,
            "damaged WAL bytes cut off or skipped; every good record before and after is kept"
        );
    }
    let (tx, rx) = mpsc::sync_channel(options.queue_batches);
    let mut writer = Writer {
        ks,
        fsync: options.durability == Durability::Fsync,
        logged_end: wal_reader.acked(),
        flushed_end: wal_reader.acked(),
        wal,
        wal_reader,
        last_checkpoint: Instant::now(),
        unflushed_since: None,
        unflushed_agents: HashSet::new(),
        head_max_samples: options.head_max_samples,
        head_max_age: options.head_max_age,
        flush_head_on_stop: options.flush_head_on_stop,
        known,
        offsets,
        dirty,
        next_seq,
        limits: options.limits.clone(),
        tenant_series,
        retention: options.retention.clone(),
        dictionary: HashSet::new(),
    };
    writer.ks.publish_tenant_series(&writer.tenant_series);
    writer.replay()?;
    let handle = std::thread::Builder::new()
        .name("storage-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(StorageError::Thread)?;
    Ok((tx, handle))
}

pub(super) fn decode_offset(v: &[u8]) -> Result<(u64, u64), StorageError> {
    let bad = || corrupt("meta", format!("agent offset of {} bytes", v.len()));
    let epoch: [u8; 8] = v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    let seq: [u8; 8] = v
        .get(8..16)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    Ok((u64::from_be_bytes(epoch), u64::from_be_bytes(seq)))
}

/// Splits samples (ascending) at UTC day boundaries and at [`MAX_CHUNK_SAMPLES`]: a chunk
/// never spans two days.
fn day_pieces(samples: &[Sample]) -> Vec<&[Sample]> {
    let mut out = Vec::new();
    let mut rest = samples;
    while let Some(first) = rest.first() {
        let end = keys::day_end(first.timestamp_ms);
        let n = rest
            .partition_point(|s| s.timestamp_ms <= end)
            .min(MAX_CHUNK_SAMPLES);
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// What a group commit changes, kept aside until the commit succeeds.
#[derive(Default)]
struct Pending {
    series: HashSet<SeriesId>,
    /// Series removed from the index in this group, with their tenant.
    forgotten: Vec<(Tenant, SeriesId)>,
    /// New series per tenant in this group.
    tenant_series: HashMap<Tenant, u64>,
    offsets: HashMap<String, (u64, u64)>,
    dirty: HashMap<(SeriesId, i64), Option<Dirty>>,
    next_seq: u64,
    /// Samples for the head, per write batch: its tenant and each series' samples.
    head: Vec<(Tenant, Vec<SeriesSamples>)>,
    /// Encrypted dictionary entries this group writes.
    dictionary: HashSet<DictionaryId>,
}

/// One series' decoded samples from a write batch.
type SeriesSamples = (SeriesId, Vec<Sample>);

/// What applying one batch stored and refused.
struct Applied<'a> {
    agent: &'a str,
    stored: u64,
    rejected: u32,
    rejection: Option<String>,
}

impl<'a> Applied<'a> {
    fn new(agent: &'a str) -> Self {
        Self {
            agent,
            stored: 0,
            rejected: 0,
            rejection: None,
        }
    }

    fn reject(&mut self, reason: &'static str, message: String, labels: &Labels) {
        self.rejected += 1;
        metrics::counter!("updraft_core_series_rejected_total", "reason" => reason).increment(1);
        // Label sets can be long; the first refusal is enough to act on.
        let mut text = format!("series {labels}: {message}");
        if text.len() > 512 {
            let cut = (0..=512)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            text.truncate(cut);
        }
        tracing::warn!(agent = self.agent, reason, %text, "series refused");
        self.rejection.get_or_insert(text);
    }

    fn outcome(self) -> AckOutcome {
        AckOutcome::Stored {
            samples: self.stored,
            rejected_series: self.rejected,
            rejection: self.rejection,
        }
    }
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(r) => r,
                None => match rx.recv_timeout(IDLE_TICK) {
                    Ok(r) => r,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.flush_if_due();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            // A series removal commits alone: writes grouped with it would see the series
            // as known (its removal is not absorbed yet) and skip re-creating its index entry.
            let alone = matches!(first, Request::ForgetSeries { .. });
            let mut samples = first.weight();
            let mut group = vec![first];
            while !alone && samples < GROUP_MAX_SAMPLES {
                match rx.try_recv() {
                    Ok(r @ Request::ForgetSeries { .. }) => {
                        carried = Some(r);
                        break;
                    }
                    Ok(r) => {
                        samples += r.weight();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        // Stopping: the head goes to fjall so that a restart has nothing to replay.
        if self.flush_head_on_stop
            && let Err(e) = self.flush_head().and_then(|()| self.checkpoint())
        {
            tracing::error!(error = %e, "final head flush failed; the WAL keeps the data");
        }
        tracing::info!("storage writer stopped");
    }

    /// Removes from the index every series of `ids` that holds no chunk in any partition of
    /// `tenant`: its `series` entry, its postings and its dirty marks. Runs in a group of its
    /// own, so fjall's committed state is the whole truth about the series' chunks.
    fn apply_forget(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        tenant: &Tenant,
        ids: &[SeriesId],
    ) -> Result<usize, StorageError> {
        let partitions: Vec<Keyspace> = self
            .ks
            .chunks
            .all()
            .into_iter()
            .filter(|(t, _)| t == tenant)
            .filter_map(|(t, index)| self.ks.chunks.get(&t, index))
            .collect();
        let mut forgotten = 0;
        for &id in ids {
            if !self.known.contains(&id) {
                continue;
            }
            let prefix = id.0.to_be_bytes();
            let mut has_chunks = false;
            for partition in &partitions {
                if let Some(kv) = partition.prefix(prefix).next() {
                    kv.into_inner()?;
                    has_chunks = true;
                    break;
                }
            }
            if has_chunks || self.ks.head.contains(id) {
                continue;
            }
            let Some(value) = self.ks.series.get(keys::series_key(id))? else {
                continue;
            };
            let value = self.ks.vault.open_index(&keys::series_key(id), &value)?;
            let (owner, labels): (Tenant, Labels) = postcard::from_bytes(&value)
                .map_err(|e| corrupt("series", format!("entry of {id}: {e}")))?;
            if &owner != tenant {
                continue;
            }
            wb.remove(&self.ks.series, keys::series_key(id));
            for l in labels.iter() {
                let k = self
                    .ks
                    .vault
                    .posting_key(tenant.as_str(), &l.name, &l.value, id);
                wb.remove(&self.ks.postings, k);
            }
            p.forgotten.push((owner, id));
            forgotten += 1;
        }
        let gone: HashSet<SeriesId> = p.forgotten.iter().map(|(_, id)| *id).collect();
        for &(series, day) in self.dirty.keys() {
            if gone.contains(&series) {
                p.dirty.insert((series, day), None);
            }
        }
        Ok(forgotten)
    }

    fn dirty_of(&self, p: &Pending, key: (SeriesId, i64)) -> Option<Dirty> {
        match p.dirty.get(&key) {
            Some(d) => *d,
            None => self.dirty.get(&key).copied(),
        }
    }

    /// Why `labels` may not be written under the limits, as (counter reason, message).
    fn check_limits(
        &self,
        p: &Pending,
        tenant: &Tenant,
        id: SeriesId,
        labels: &Labels,
    ) -> Result<(), (&'static str, String)> {
        let l = &self.limits;
        if labels.len() > l.max_labels_per_series {
            return Err((
                "too_many_labels",
                format!(
                    "{} labels, more than the limit of {}",
                    labels.len(),
                    l.max_labels_per_series
                ),
            ));
        }
        for label in labels.iter() {
            if label.name.len() > l.max_label_name_bytes {
                return Err((
                    "label_name_too_long",
                    format!(
                        "label name of {} bytes, more than the limit of {}",
                        label.name.len(),
                        l.max_label_name_bytes
                    ),
                ));
            }
            if label.value.len() > l.max_label_value_bytes {
                return Err((
                    "label_value_too_long",
                    format!(
                        "value of label {:?} has {} bytes, more than the limit of {}",
                        label.name,
                        label.value.len(),
                        l.max_label_value_bytes
                    ),
                ));
            }
        }
        let is_new = !self.known.contains(&id) && !p.series.contains(&id);
        if is_new {
            let have = self.tenant_series.get(tenant).copied().unwrap_or_default()
                + p.tenant_series.get(tenant).copied().unwrap_or_default();
            if have >= l.max_series_per_tenant {
                return Err((
                    "series_limit",
                    format!(
                        "tenant {tenant} has {have} series, the limit; no new series are created"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn apply_write(&self, wb: &mut OwnedWriteBatch, p: &mut Pending, b: &WriteBatch) -> AckOutcome {
        let agent = b.agent_id.0.as_str();
        // An untracked batch (no agent) is applied every time and records no offset: its
        // sender retries whole requests, and a resent sample only rewrites itself.
        let tracked = !b.agent_id.is_untracked();
        let last = p
            .offsets
            .get(agent)
            .or_else(|| self.offsets.get(agent))
            .copied();
        if tracked && matches!(last, Some((epoch, seq)) if epoch == b.epoch && b.sequence <= seq) {
            return AckOutcome::Duplicate;
        }
        let mut applied = Applied::new(agent);
        let mut head = Vec::with_capacity(b.series.len());
        for s in &b.series {
            // Decoding verifies the checksum and the order of timestamps.
            let samples =
                codec::decode(&s.chunk).map_err(|e| ("bad_chunk", format!("damaged chunk: {e}")));
            if let Some(series) =
                self.apply_series(wb, p, &b.tenant, &s.labels, samples, &mut applied)
            {
                head.push(series);
            }
        }
        if !head.is_empty() {
            p.head.push((b.tenant.clone(), head));
        }
        if tracked {
            p.offsets.insert(agent.to_owned(), (b.epoch, b.sequence));
        }
        applied.outcome()
    }

    /// Applies samples from the HTTP ingest APIs (no agent, no offset), moving them into the
    /// head: the batch is already in the WAL.
    fn apply_samples(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        b: &mut SampleBatch,
    ) -> AckOutcome {
        let mut applied = Applied::new("");
        let mut head = Vec::with_capacity(b.series.len());
        for (labels, samples) in &mut b.series {
            let samples = Ok(std::mem::take(samples));
            if let Some(series) = self.apply_series(wb, p, &b.tenant, labels, samples, &mut applied)
            {
                head.push(series);
            }
        }
        if !head.is_empty() {
            p.head.push((b.tenant.clone(), head));
        }
        applied.outcome()
    }

    /// Checks one series of a batch (limits, retention), stages it if it is new, and returns
    /// its samples for the head; a refusal is counted in `applied`.
    fn apply_series(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        tenant: &Tenant,
        labels: &Labels,
        samples: Result<Vec<Sample>, (&'static str, String)>,
        applied: &mut Applied<'_>,
    ) -> Option<SeriesSamples> {
        let id = SeriesId::of(tenant, labels);
        if let Err((reason, message)) = self.check_limits(p, tenant, id, labels) {
            applied.reject(reason, message, labels);
            return None;
        }
        let samples = match samples {
            Ok(samples) => samples,
            Err((reason, message)) => {
                applied.reject(reason, message, labels);
                return None;
            }
        };
        let newest = samples.last().map_or(i64::MIN, |s| s.timestamp_ms);
        let cutoff = self.retention.cutoff(tenant, now_ms());
        if let Some(cutoff) = cutoff.filter(|c| newest < *c) {
            applied.reject(
                "out_of_retention",
                format!("every sample is older than the tenant's retention ({cutoff} ms)"),
                labels,
            );
            return None;
        }
        if !self.known.contains(&id) && !p.series.contains(&id) {
            if let Err(e) = self.stage_series(wb, p, tenant, id, labels) {
                applied.reject("storage", format!("sealing the series entry: {e}"), labels);
                return None;
            }
            p.series.insert(id);
            *p.tenant_series.entry(tenant.clone()).or_default() += 1;
        }
        applied.stored += samples.len() as u64;
        Some((id, samples))
    }

    /// Adds a new series' entry, postings and (encrypted) dictionary entries to the batch.
    fn stage_series(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        tenant: &Tenant,
        id: SeriesId,
        labels: &Labels,
    ) -> Result<(), crypt::CryptError> {
        let vault = &self.ks.vault;
        // Serialising owned, serde-derived values into a Vec cannot fail.
        let value = postcard::to_allocvec(&(tenant, labels)).unwrap_or_default();
        let value = vault.seal_index(&keys::series_key(id), value)?;
        let entries = vault.index_entries(
            tenant.as_str(),
            labels,
            id,
            &self.dictionary,
            &mut p.dictionary,
        )?;
        wb.insert(&self.ks.series, keys::series_key(id), value);
        for (k, v) in entries {
            wb.insert(&self.ks.postings, k, v);
        }
        Ok(())
    }

    fn apply_replace(&self, wb: &mut OwnedWriteBatch, p: &mut Pending, r: &Replace) {
        // A merged block can take the key of a chunk it replaces (same first timestamp and
        // highest sequence); that key is overwritten, not removed and re-added in one batch.
        if let Some(partition) = &r.partition {
            for k in r
                .remove
                .iter()
                .filter(|k| !r.add.iter().any(|(a, _)| a == *k))
            {
                wb.remove(partition, *k);
            }
            for (k, v) in &r.add {
                wb.insert(partition, *k, v.clone());
            }
        }
        let key = (r.series, r.day_start);
        match self.dirty_of(p, key) {
            // Nothing written since the snapshot: the day is clean.
            Some(d) if d.last_seq == r.seen_seq => {
                p.dirty.insert(key, None);
            }
            // Newer chunks arrived meanwhile: the mark stays for the next pass, counting only
            // what is still unmerged.
            Some(d) => {
                let left = Dirty {
                    last_seq: d.last_seq,
                    chunks: d.chunks.saturating_sub(r.remove.len() as u32).max(1),
                };
                p.dirty.insert(key, Some(left));
            }
            None => {}
        }
    }

    /// Where fjall's state ends in the WAL: records up to here are in fjall already and must
    /// not be applied again (re-applying would judge duplicates against a later state).
    fn fjall_applied(&self) -> Result<Option<Offset>, StorageError> {
        let Some(v) = self.ks.meta.get(WAL_APPLIED_KEY)? else {
            return Ok(None);
        };
        let bad = || corrupt("meta", format!("wal-applied of {} bytes", v.len()));
        let epoch = u64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let end = u64::from_be_bytes(
            v.get(8..16)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        if epoch != self.wal_reader.epoch().0 {
            // The WAL lost its cursor and started a new epoch: offsets are not comparable.
            // Replaying everything it holds is the safe side (data is kept, not lost).
            tracing::warn!("WAL epoch changed; replaying every record it holds");
            return Ok(None);
        }
        Ok(Some(Offset(end)))
    }

    /// Applies every WAL record that fjall does not hold yet (into the head, as when it was
    /// first written), flushes the head, then checkpoints.
    fn replay(&mut self) -> Result<(), StorageError> {
        let started = Instant::now();
        let (mut batches, mut corrupt) = (0u64, 0u64);
        let applied = self.fjall_applied()?;
        let mut from = self.wal_reader.acked();
        loop {
            let chunk = self.wal_reader.read(from, 64 * 1024 * 1024)?;
            corrupt += chunk.corrupt_bytes;
            if chunk.records.is_empty() && chunk.next == from {
                break;
            }
            let mut wb = self.ks.db.batch();
            let mut p = Pending {
                next_seq: self.next_seq,
                ..Pending::default()
            };
            let mut last_end = None;
            for record in chunk
                .records
                .iter()
                .filter(|r| applied.is_none_or(|a| r.end > a))
            {
                last_end = Some(record.end);
                match Batch::decode(&record.payload) {
                    Ok(Batch::Chunks(b)) => {
                        self.apply_write(&mut wb, &mut p, &b);
                        batches += 1;
                    }
                    Ok(Batch::Samples(mut b)) => {
                        self.apply_samples(&mut wb, &mut p, &mut b);
                        batches += 1;
                    }
                    Err(_) => {
                        // Checksummed bytes we wrote ourselves: a newer or broken build.
                        corrupt += record.end.0 - record.start.0;
                        tracing::error!(offset = record.start.0, "undecodable WAL record skipped");
                    }
                }
            }
            if let Some(end) = last_end {
                // New series entries; the samples go to the head, as in `commit_group`.
                wb.commit()?;
                self.absorb(p);
                self.logged_end = end;
                if self.ks.head.len() >= self.head_max_samples {
                    self.flush_head()?;
                }
            }
            from = chunk.next;
        }
        self.logged_end = from;
        self.flush_head()?;
        if corrupt > 0 {
            metrics::counter!("updraft_core_wal_corrupt_bytes_total").increment(corrupt);
        }
        metrics::counter!("updraft_core_wal_replayed_batches_total").increment(batches);
        self.checkpoint()?;
        tracing::info!(batches, corrupt_bytes = corrupt, elapsed = ?started.elapsed(), "WAL replayed");
        Ok(())
    }

    /// Makes fjall durable, then lets the WAL drop what fjall now holds: everything up to the
    /// last head flush.
    fn checkpoint(&mut self) -> Result<(), StorageError> {
        self.ks.db.persist(PersistMode::SyncAll)?;
        if !self.fsync {
            self.wal.sync()?;
        }
        // When fjall holds everything the WAL does (a flush with no write since), a new
        // segment lets the whole log go with this acknowledgement, instead of keeping up to
        // a segment's worth of records that are already in fjall.
        if self.flushed_end == self.logged_end && self.flushed_end == self.wal.end() {
            self.wal.roll_at(WAL_ROLL_BYTES)?;
        }
        self.wal_reader.ack(self.flushed_end)?;
        self.last_checkpoint = Instant::now();
        metrics::counter!("updraft_core_checkpoints_total").increment(1);
        metrics::gauge!("updraft_core_wal_bytes").set(self.wal_reader.unacked_bytes() as f64);
        Ok(())
    }

    /// Adds the group's dirty marks to its batch: one write per (series, day) and group,
    /// however many chunks of it the group holds.
    fn stage_dirty(&self, wb: &mut OwnedWriteBatch, p: &Pending) {
        for (&(series, day), mark) in &p.dirty {
            let key = keys::dirty_key(series, day);
            match mark {
                Some(d) => wb.insert(&self.ks.dirty, key, d.encode()),
                None => wb.remove(&self.ks.dirty, key),
            }
        }
    }

    /// Takes a committed group's changes into the writer's state.
    fn absorb(&mut self, p: Pending) {
        metrics::counter!("updraft_core_series_created_total").increment(p.series.len() as u64);
        metrics::counter!("updraft_core_series_forgotten_total")
            .increment(p.forgotten.len() as u64);
        for (tenant, id) in &p.forgotten {
            self.known.remove(id);
            if let Some(n) = self.tenant_series.get_mut(tenant) {
                *n = n.saturating_sub(1);
            }
        }
        self.known.extend(p.series);
        for (tenant, series) in p.head {
            for (id, samples) in series {
                self.ks.head.append(id, &tenant, samples);
            }
        }
        if !p.offsets.is_empty() {
            self.unflushed_agents.extend(p.offsets.keys().cloned());
            self.ks.head.set_agent_offsets(p.offsets.clone());
        }
        let counts_changed = !p.tenant_series.is_empty() || !p.forgotten.is_empty();
        for (tenant, n) in p.tenant_series {
            *self.tenant_series.entry(tenant).or_default() += n;
        }
        if counts_changed {
            self.ks.publish_tenant_series(&self.tenant_series);
        }
        self.offsets.extend(p.offsets);
        for (key, mark) in p.dirty {
            match mark {
                Some(d) => self.dirty.insert(key, d),
                None => self.dirty.remove(&key),
            };
        }
        self.next_seq = p.next_seq;
        if self.dictionary.len() + p.dictionary.len() > DICTIONARY_MEMORY {
            self.dictionary.clear();
        }
        self.dictionary.extend(p.dictionary);
        metrics::gauge!("updraft_core_series").set(self.known.len() as f64);
    }

    /// Appends the group's write batches to the WAL and, in fsync mode, makes them durable.
    fn log_group(&mut self, group: &[Request]) -> Result<Option<Offset>, StorageError> {
        let mut end = None;
        for req in group {
            if let Request::Write { batch, .. } = req {
                end = Some(self.wal.append(&batch.encode())?);
            }
        }
        if end.is_some() && self.fsync {
            self.wal.sync()?;
        }
        Ok(end)
    }

    /// Flushes the head when it is full or old enough, then checkpoints when due.
    fn flush_if_due(&mut self) {
        let full = self.ks.head.len() >= self.head_max_samples;
        let old = self
            .unflushed_since
            .is_some_and(|t| t.elapsed() >= self.head_max_age);
        if (full || old)
            && let Err(e) = self.flush_head()
        {
            tracing::error!(error = %e, "head flush failed; the WAL keeps the data");
            return;
        }
        let due = self.wal_reader.unacked_bytes() >= CHECKPOINT_BYTES
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
        if let Some(Err(e)) = due.then(|| self.checkpoint()) {
            tracing::error!(error = %e, "checkpoint failed; the WAL keeps the data");
        }
    }

    /// Cuts every series of the head into chunks (one per UTC day) and commits them in one
    /// fjall batch with their dirty marks, the agents' offsets, the next write sequence and
    /// the WAL position they cover; then empties the head. Readers see the samples in the
    /// head until the commit and in fjall from it on (see [`super::head`]).
    fn flush_head(&mut self) -> Result<(), StorageError> {
        if self.ks.head.len() == 0 && self.logged_end == self.flushed_end {
            return Ok(());
        }
        let started = Instant::now();
        let samples = self.ks.head.len();
        let mut wb = self.ks.db.batch();
        let mut p = Pending {
            next_seq: self.next_seq,
            ..Pending::default()
        };
        let mut chunks = 0u64;
        self.ks
            .head
            .try_for_each(|id, series| -> Result<(), StorageError> {
                for piece in day_pieces(&series.samples) {
                    let Some(first) = piece.first() else {
                        continue;
                    };
                    let min_ts = first.timestamp_ms;
                    let partition = self
                        .ks
                        .chunks
                        .get_or_create(&series.tenant, partitions::index_of(min_ts))?;
                    let bytes = codec::encode(piece).map_err(|e| {
                        corrupt("chunks", format!("encoding the head of {id}: {e}"))
                    })?;
                    let seq = p.next_seq;
                    p.next_seq += 1;
                    let key = keys::chunk_key(id, min_ts, seq);
                    let bytes = self.ks.vault.seal_chunk(&key, bytes)?;
                    wb.insert(&partition, key, bytes);
                    let day = keys::day_start(min_ts);
                    let chunks_before = self.dirty_of(&p, (id, day)).map_or(0, |d| d.chunks);
                    let mark = Dirty {
                        last_seq: seq,
                        chunks: chunks_before.saturating_add(1),
                    };
                    p.dirty.insert((id, day), Some(mark));
                    chunks += 1;
                }
                Ok(())
            })?;
        for agent in &self.unflushed_agents {
            if let Some((epoch, seq)) = self.offsets.get(agent) {
                let mut offset = Vec::with_capacity(16);
                offset.extend_from_slice(&epoch.to_be_bytes());
                offset.extend_from_slice(&seq.to_be_bytes());
                wb.insert(&self.ks.meta, keys::agent_offset_key(agent), offset);
            }
        }
        self.stage_dirty(&mut wb, &p);
        wb.insert(&self.ks.meta, NEXT_SEQ_KEY, p.next_seq.to_be_bytes());
        let position = wal_position(self.wal_reader.epoch(), self.logged_end);
        wb.insert(&self.ks.meta, WAL_APPLIED_KEY, position);
        wb.commit()?;
        self.absorb(p);
        self.ks.head.clear();
        self.flushed_end = self.logged_end;
        self.unflushed_since = None;
        self.unflushed_agents.clear();
        metrics::counter!("updraft_core_head_flushes_total").increment(1);
        metrics::counter!("updraft_core_chunks_written_total").increment(chunks);
        metrics::histogram!("updraft_core_head_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(samples, chunks, elapsed = ?started.elapsed(), "head flushed");
        Ok(())
    }

    fn commit_group(&mut self, mut group: Vec<Request>) {
        let started = Instant::now();
        let logged = match self.log_group(&group) {
            Ok(end) => end,
            Err(e) => {
                // A failed WAL write poisons the log: nothing more is acknowledged until a
                // restart recovers it. Agents keep their data and retry.
                tracing::error!(error = %e, "WAL append failed");
                let e = Arc::new(e);
                for req in group {
                    match req {
                        Request::Write { reply, .. } => {
                            metrics::counter!("updraft_core_batches_total", "outcome" => "failed")
                                .increment(1);
                            let _ = reply.send(Err(e.clone()));
                        }
                        Request::Replace { reply, .. }
                        | Request::DropPartition { reply, .. }
                        | Request::Checkpoint { reply } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Request::ForgetSeries { reply, .. } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
                return;
            }
        };
        // fjall applies without an fsync: the WAL already holds the batches.
        let mut wb = self.ks.db.batch();
        let mut p = Pending {
            next_seq: self.next_seq,
            ..Pending::default()
        };
        let mut outcomes = Vec::with_capacity(group.len());
        // The answer to a `ForgetSeries`, which is always alone in its group.
        let mut forget: Option<Result<usize, StorageError>> = None;
        for req in &mut group {
            match req {
                Request::Write { batch, .. } => outcomes.push(Some(match batch {
                    Batch::Chunks(b) => self.apply_write(&mut wb, &mut p, b),
                    Batch::Samples(b) => self.apply_samples(&mut wb, &mut p, b),
                })),
                Request::Replace { plans, .. } => {
                    for plan in plans {
                        self.apply_replace(&mut wb, &mut p, plan);
                    }
                    outcomes.push(None);
                }
                // Answered after the group commits, so it covers everything before it.
                Request::Checkpoint { .. } => outcomes.push(None),
                Request::DropPartition {
                    tenant,
                    index,
                    reply,
                } => {
                    // Not part of the batch: dropping a keyspace is its own atomic step.
                    let dropped = self
                        .ks
                        .chunks
                        .drop_partition(tenant, *index)
                        .map_err(Arc::new);
                    if dropped.is_ok() {
                        metrics::counter!("updraft_core_partitions_dropped_total").increment(1);
                        tracing::info!(%tenant, partition = index, "dropped a partition past retention");
                    }
                    let _ = reply.send(dropped);
                    outcomes.push(None);
                }
                Request::ForgetSeries { tenant, ids, .. } => {
                    forget = Some(self.apply_forget(&mut wb, &mut p, tenant, ids));
                    outcomes.push(None);
                }
            }
        }
        // Chunks, sequences, dirty marks from new chunks, agent offsets and the WAL position
        // are written by the next head flush; this batch holds new series, merges and
        // removals.
        self.stage_dirty(&mut wb, &p);

        match wb.commit() {
            Ok(()) => {
                metrics::histogram!("updraft_core_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.absorb(p);
                if let Some(end) = logged {
                    self.logged_end = end;
                    self.unflushed_since.get_or_insert_with(Instant::now);
                }
                for (req, outcome) in group.into_iter().zip(outcomes) {
                    match (req, outcome) {
                        (Request::Write { reply, .. }, Some(outcome)) => {
                            let label = match &outcome {
                                AckOutcome::Duplicate => "duplicate",
                                _ => "stored",
                            };
                            if let AckOutcome::Stored { samples, .. } = &outcome {
                                metrics::counter!("updraft_core_samples_stored_total")
                                    .increment(*samples);
                            }
                            metrics::counter!("updraft_core_batches_total", "outcome" => label)
                                .increment(1);
                            // The receiver may have gone (connection lost); the data is stored.
                            let _ = reply.send(Ok(outcome));
                        }
                        (Request::Replace { reply, .. }, _) => {
                            let _ = reply.send(Ok(()));
                        }
                        (Request::DropPartition { .. }, _) => {}
                        (Request::Checkpoint { reply }, _) => {
                            let done = self.flush_head().and_then(|()| self.checkpoint());
                            let _ = reply.send(done.map_err(Arc::new));
                        }
                        (Request::ForgetSeries { reply, .. }, _) => {
                            let answer = match forget.take() {
                                Some(r) => r.map_err(Arc::new),
                                None => Ok(0),
                            };
                            let _ = reply.send(answer);
                        }
                        (Request::Write { reply, .. }, None) => {
                            let _ = reply.send(Err(Arc::new(StorageError::WriterStopped)));
                        }
                    }
                }
                self.flush_if_due();
            }
            Err(e) => {
                // fjall poisons the database after a failed journal write; every later batch
                // fails the same way, and agents keep their data and retry elsewhere.
                tracing::error!(error = %e, requests = group.len(), "commit failed");
                let e = Arc::new(StorageError::Engine(e));
                for req in group {
                    match req {
                        Request::Write { reply, .. } => {
                            metrics::counter!("updraft_core_batches_total", "outcome" => "failed")
                                .increment(1);
                            let _ = reply.send(Err(e.clone()));
                        }
                        Request::Replace { reply, .. } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Request::DropPartition { .. } => {}
                        Request::Checkpoint { reply } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        Request::ForgetSeries { reply, .. } => {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }
}

impl Request {
    /// Rough size, to bound how much one group commit gathers.
    fn weight(&self) -> usize {
        match self {
            Self::Write { batch, .. } => batch.sample_count(),
            Self::Replace { plans, .. } => plans
                .iter()
                .flat_map(|plan| plan.add.iter())
                .map(|(_, v)| v.len())
                .sum::<usize>()
                .div_ceil(2)
                .max(plans.len()),
            Self::DropPartition { .. } | Self::Checkpoint { .. } => 0,
            Self::ForgetSeries { ids, .. } => ids.len(),
        }
    }
}

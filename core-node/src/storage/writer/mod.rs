//! The single writer thread: group commit of queued batches, the retention pass's decisions
//! and the compactor's merges (see the module docs of [`super`] for the protocol).
//!
//! A group goes through three steps, each in its own module:
//! 1. [`admit`]: the decisions that read the clock, the settings or node-wide counters
//!    (limits, retention, duplicates), taken once; refused series leave the batch.
//! 2. logging: the admitted records are appended to the WAL and fsynced.
//! 3. [`apply`]: each record is applied, deterministically, and the group committed; the same
//!    code applies records again at a replay ([`flush`]).
//!
//! # Supervision
//!
//! The writer cannot fail silently: a WAL or fjall write or fsync that fails, a head flush or
//! checkpoint that fails, or a panic of the thread marks storage failed ([`super::health`]),
//! which `/health`, `updraft_core_storage_healthy` and the node's supervisor (it exits after a
//! grace period) report. Every later write is refused with the reason. The disk-space guard
//! is checked here too, between groups, so that the node turns read-only before its disk
//! fills.
//!
//! # Durability: the write-ahead log and the head
//!
//! Every admitted write batch is appended to the WAL (a [`seglog`] log under `<data-dir>/wal`, each
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

mod admit;
mod apply;
mod flush;
pub(super) mod group;

use super::health::{DiskGuard, Health};
use super::partitions::Retention;
use super::record::{Batch, Record};
use super::vault::DictionaryId;
use super::{Clock, Durability, Keyspaces, Limits, StorageError, StorageOptions, keys};
use apply::Pending;
use fjall::Keyspace;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use protocols::wire::AckOutcome;
use protocols::{Labels, SeriesId, Tenant};
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
/// How often the writer looks at the disk's free space while writes arrive.
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// At a checkpoint that leaves nothing unflushed, the WAL starts a new segment when the current
/// one holds at least this much (so the old one can be deleted); less stays where it is.
const WAL_ROLL_BYTES: u64 = 1024 * 1024;
/// The offset scope of the node's own log (a single node; shard groups have ids from 1).
pub(super) const NODE_SCOPE: u64 = 0;

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
    /// A record to log and apply as it is, without admission: the retention pass's
    /// decisions ([`Record::DropPartition`], [`Record::ForgetSeries`]), and writes admitted
    /// elsewhere (a store fed another's log; with the cluster, a group leader's entries).
    /// A retention record commits in a group of its own (see [`Writer::run`]), so no write of
    /// the same group can depend on a series it removes. Answers how many samples were stored,
    /// or how many partitions or series went.
    Apply {
        record: Record,
        reply: mpsc::Sender<Result<usize, Arc<StorageError>>>,
    },
    /// A shard group's committed entries or snapshot (see [`group`]).
    Group(group::GroupRequest),
    /// Tests: make the writer thread panic, as a bug would.
    #[cfg(test)]
    Panic,
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
    /// Agents whose offset changed since the last head flush, with the scope of the offset
    /// (see [`Writer::offsets`]).
    unflushed_agents: HashSet<(u64, String)>,
    head_max_samples: usize,
    head_max_age: Duration,
    flush_head_on_stop: bool,
    /// Series whose `series` and `postings` entries are already committed.
    known: HashSet<SeriesId>,
    /// Last applied (epoch, sequence) per agent, as committed, per scope: [`NODE_SCOPE`] for
    /// the node's own log, a shard group's id for what that group applied (a cluster splits
    /// an agent's batch by group, and each group applies its part once).
    offsets: HashMap<u64, HashMap<String, (u64, u64)>>,
    /// The applied position of each shard group hosted here (opaque, see [`group`]), as
    /// applied; written at each head flush for the groups in `unflushed_groups`.
    group_applied: HashMap<u64, Vec<u8>>,
    unflushed_groups: HashSet<u64>,
    /// Dirty marks as committed.
    dirty: HashMap<(SeriesId, i64), Dirty>,
    /// Next chunk write sequence, as committed.
    next_seq: u64,
    /// Admission only ([`admit`]): applying never reads these three.
    limits: Limits,
    retention: Retention,
    clock: Clock,
    /// Series per tenant, as committed.
    tenant_series: HashMap<Tenant, u64>,
    /// Encrypted dictionary entries committed since the start (see [`super::vault`]): a name
    /// or value shared by many series is sealed and written once, not with every series.
    /// Emptied past [`DICTIONARY_MEMORY`] entries, after which each is written once more.
    dictionary: HashSet<DictionaryId>,
    disk: DiskGuard,
    last_disk_check: Instant,
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
    let mut offsets: HashMap<u64, HashMap<String, (u64, u64)>> = HashMap::new();
    let prefix = keys::agent_offset_key("");
    for kv in ks.meta.prefix(&prefix) {
        let (k, v) = kv.into_inner()?;
        let agent = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        offsets
            .entry(NODE_SCOPE)
            .or_default()
            .insert(agent, decode_offset(&v)?);
    }
    for kv in ks.meta.prefix(keys::GROUP_OFFSETS) {
        let (k, v) = kv.into_inner()?;
        let (group, agent) = keys::decode_group_offset_key(&k)
            .ok_or_else(|| corrupt("meta", format!("group offset key of {} bytes", k.len())))?;
        offsets
            .entry(group)
            .or_default()
            .insert(agent, decode_offset(&v)?);
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
    let mut group_applied = HashMap::new();
    let prefix = keys::group_applied_key(0);
    let prefix = &prefix[..prefix.len() - 8];
    for kv in ks.meta.prefix(prefix) {
        let (k, v) = kv.into_inner()?;
        let group = k
            .get(prefix.len()..)
            .and_then(|g| <[u8; 8]>::try_from(g).ok())
            .ok_or_else(|| corrupt("meta", format!("group-applied key of {} bytes", k.len())))?;
        group_applied.insert(u64::from_be_bytes(group), v.to_vec());
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
    if let Some(own) = offsets.get(&NODE_SCOPE) {
        ks.head.set_agent_offsets(own.clone());
    }
    tracing::info!(
        series = known.len(),
        agents = offsets.values().map(HashMap::len).sum::<usize>(),
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
        group_applied,
        unflushed_groups: HashSet::new(),
        dirty,
        next_seq,
        limits: options.limits.clone(),
        retention: options.retention.clone(),
        clock: options.clock.clone(),
        tenant_series,
        dictionary: HashSet::new(),
        disk: DiskGuard::new(dir, options.min_free_disk_bytes),
        last_disk_check: Instant::now(),
    };
    writer.ks.publish_tenant_series(&writer.tenant_series);
    writer.disk.check(&writer.ks.health);
    writer.replay()?;
    let handle = std::thread::Builder::new()
        .name("storage-writer".into())
        .spawn(move || {
            let health = Arc::clone(&writer.ks.health);
            supervised(&health, "storage writer", move || writer.run(rx));
        })
        .map_err(StorageError::Thread)?;
    Ok((tx, handle))
}

/// Runs `body`; a panic marks storage failed instead of leaving a dead thread behind a
/// queue that only answers "stopped".
pub(super) fn supervised(health: &Health, thread: &str, body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        health.fail(format!("the {thread} thread panicked: {message}"));
    }
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

/// A request of a group, with what admission decided and what applying it answered.
struct Entry {
    request: Request,
    /// A write's admission verdict; `None` for the other requests.
    verdict: Option<admit::Verdict>,
    /// A write's outcome, or a retention record's answer, once applied.
    outcome: Option<Result<AckOutcome, apply::RetentionOutcome>>,
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
            #[cfg(test)]
            if matches!(first, Request::Panic) {
                panic!("panic requested by a test");
            }
            if let Request::Group(request) = first {
                self.group_request(request);
                self.flush_if_due();
                continue;
            }
            // A retention decision commits alone: writes grouped with it would see a series
            // it removes as known (its removal is not absorbed yet) and skip re-creating its
            // index entry.
            let alone = first.alone();
            let mut samples = first.weight();
            let mut group = vec![first];
            while !alone && samples < GROUP_MAX_SAMPLES {
                match rx.try_recv() {
                    Ok(r) if r.alone() => {
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
            && !self.ks.health.get().is_failed()
            && let Err(e) = self.flush_head().and_then(|()| self.checkpoint())
        {
            tracing::error!(error = %e, "final head flush failed; the WAL keeps the data");
        }
        tracing::info!("storage writer stopped");
    }

    /// Flushes the head when it is full or old enough, then checkpoints when due; looks at
    /// the disk's free space.
    fn flush_if_due(&mut self) {
        if self.last_disk_check.elapsed() >= DISK_CHECK_INTERVAL {
            self.disk.check(&self.ks.health);
            self.last_disk_check = Instant::now();
        }
        if self.ks.health.get().is_failed() {
            return;
        }
        let full = self.ks.head.len() >= self.head_max_samples;
        let old = self
            .unflushed_since
            .is_some_and(|t| t.elapsed() >= self.head_max_age);
        if (full || old)
            && let Err(e) = self.flush_head()
        {
            self.ks.health.fail(format!("head flush failed: {e}"));
            return;
        }
        let due = self.wal_reader.unacked_bytes() >= CHECKPOINT_BYTES
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
        if let Some(Err(e)) = due.then(|| self.checkpoint()) {
            self.ks.health.fail(format!("checkpoint failed: {e}"));
        }
    }

    /// Admits, logs and applies one group, then answers every request of it.
    fn commit_group(&mut self, group: Vec<Request>) {
        let started = Instant::now();
        // A failed writer takes nothing more; read-only refuses writes but still lets
        // retention free space and the compactor and checkpoints finish.
        let health = self.ks.health.get();
        if health.is_failed() {
            return refuse(group, health.reason().unwrap_or_default(), true);
        }
        let (group, refused): (Vec<Request>, Vec<Request>) = match health.reason() {
            Some(_) => group
                .into_iter()
                .partition(|r| !matches!(r, Request::Write { .. })),
            None => (group, Vec::new()),
        };
        if let Some(reason) = health.reason() {
            refuse(refused, reason, false);
        }
        let mut g = admit::GroupAdmission::default();
        let mut entries: Vec<Entry> = group
            .into_iter()
            .map(|mut request| {
                let verdict = match &mut request {
                    Request::Write { batch, .. } => Some(self.admit(NODE_SCOPE, &mut g, batch)),
                    _ => None,
                };
                Entry {
                    request,
                    verdict,
                    outcome: None,
                }
            })
            .collect();
        let logged = match self.log_group(&entries) {
            Ok(end) => end,
            Err(e) => {
                // A failed WAL write poisons the log: nothing more is acknowledged until a
                // restart recovers it. Agents keep their data and retry.
                let reason = format!("write-ahead log write failed: {e}");
                self.ks.health.fail(reason.clone());
                return refuse(
                    entries.into_iter().map(|e| e.request).collect(),
                    &reason,
                    true,
                );
            }
        };
        // fjall applies without an fsync: the WAL already holds the records.
        let mut wb = self.ks.db.batch();
        let mut p = Pending {
            next_seq: self.next_seq,
            ..Pending::default()
        };
        for entry in &mut entries {
            entry.outcome = match (&mut entry.request, entry.verdict.take()) {
                (Request::Write { .. }, Some(v)) if v.duplicate => Some(Ok(AckOutcome::Duplicate)),
                (Request::Write { .. }, Some(v)) if v.empty => Some(Ok(v.applied.outcome())),
                (Request::Write { batch, .. }, Some(v)) => Some(Ok(self.apply_batch(
                    &mut wb,
                    &mut p,
                    batch,
                    v.applied,
                    Some(&v.ids),
                ))),
                (Request::Apply { record, .. }, _) => {
                    Some(self.apply_record(&mut wb, &mut p, record))
                }
                (Request::Replace { plans, .. }, _) => {
                    for plan in plans.iter() {
                        self.apply_replace(&mut wb, &mut p, plan);
                    }
                    None
                }
                _ => None,
            };
        }
        // Chunks, sequences, dirty marks from new chunks, agent offsets and the WAL position
        // are written by the next head flush; this batch holds new series, merges and
        // removals.
        self.stage_dirty(&mut wb, &p);
        if let Err(e) = wb.commit() {
            // fjall poisons the database after a failed journal write; every later batch
            // would fail the same way.
            let reason = format!("storage commit failed: {e}");
            self.ks.health.fail(reason.clone());
            return refuse(
                entries.into_iter().map(|e| e.request).collect(),
                &reason,
                true,
            );
        }
        metrics::histogram!("updraft_core_commit_seconds").record(started.elapsed().as_secs_f64());
        self.absorb(p);
        if let Some(end) = logged {
            self.logged_end = end;
            self.unflushed_since.get_or_insert_with(Instant::now);
        }
        for entry in entries {
            self.answer(entry);
        }
        self.flush_if_due();
    }

    fn answer(&mut self, entry: Entry) {
        match (entry.request, entry.outcome) {
            (Request::Write { reply, .. }, Some(Ok(outcome))) => {
                let label = match &outcome {
                    AckOutcome::Duplicate => "duplicate",
                    _ => "stored",
                };
                if let AckOutcome::Stored { samples, .. } = &outcome {
                    metrics::counter!("updraft_core_samples_stored_total").increment(*samples);
                }
                metrics::counter!("updraft_core_batches_total", "outcome" => label).increment(1);
                // The receiver may have gone (connection lost); the data is stored.
                let _ = reply.send(Ok(outcome));
            }
            (Request::Replace { reply, .. }, _) => {
                let _ = reply.send(Ok(()));
            }
            (Request::Checkpoint { reply }, _) => {
                // Answered after the group commits, so it covers everything before it.
                let done = self.flush_head().and_then(|()| self.checkpoint());
                if let Err(e) = &done {
                    self.ks.health.fail(format!("checkpoint failed: {e}"));
                }
                let _ = reply.send(done.map_err(Arc::new));
            }
            (Request::Apply { reply, .. }, outcome) => {
                let answer = match outcome {
                    Some(Ok(AckOutcome::Stored { samples, .. })) => Ok(samples as usize),
                    Some(Err(r)) => r.map_err(Arc::new),
                    _ => Ok(0),
                };
                let _ = reply.send(answer);
            }
            (Request::Write { reply, .. }, _) => {
                let _ = reply.send(Err(Arc::new(StorageError::WriterStopped)));
            }
            // Run on their own by `run`, never part of a write group.
            (Request::Group(request), _) => {
                request.refuse(Arc::new(StorageError::WriterStopped));
            }
            #[cfg(test)]
            (Request::Panic, _) => {}
        }
    }

    /// Appends the group's admitted records to the WAL and, in fsync mode, makes them
    /// durable.
    fn log_group(&mut self, entries: &[Entry]) -> Result<Option<Offset>, StorageError> {
        let mut end = None;
        for entry in entries {
            let bytes = match (&entry.request, &entry.verdict) {
                (Request::Write { .. }, Some(v)) if v.duplicate || v.empty => continue,
                (Request::Write { batch, .. }, _) => batch.encode(),
                (Request::Apply { record, .. }, _) => record.encode(),
                _ => continue,
            };
            end = Some(self.wal.append(&bytes)?);
        }
        if end.is_some() && self.fsync {
            self.wal.sync()?;
        }
        Ok(end)
    }
}

/// Answers every request of `group` with `reason`: storage failed (`failed`) or is
/// read-only. Writes are retryable either way: the sender keeps its data.
fn refuse(group: Vec<Request>, reason: &str, failed: bool) {
    let e = Arc::new(StorageError::Unavailable(reason.to_owned()));
    for req in group {
        match req {
            Request::Write { reply, .. } => {
                let outcome = if failed { "failed" } else { "read_only" };
                metrics::counter!("updraft_core_batches_total", "outcome" => outcome).increment(1);
                let _ = reply.send(Err(e.clone()));
            }
            Request::Replace { reply, .. } | Request::Checkpoint { reply } => {
                let _ = reply.send(Err(e.clone()));
            }
            Request::Apply { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Request::Group(request) => request.refuse(e.clone()),
            #[cfg(test)]
            Request::Panic => {}
        }
    }
}

impl Request {
    /// Whether the request commits in a group of its own (a retention decision).
    fn alone(&self) -> bool {
        matches!(
            self,
            Self::Apply {
                record: Record::DropPartition { .. }
                    | Record::DropShards { .. }
                    | Record::ForgetSeries { .. },
                ..
            } | Self::Group(_)
        )
    }

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
            Self::Checkpoint { .. } => 0,
            Self::Group(request) => request.weight(),
            Self::Apply { record, .. } => match record {
                Record::Write(b) => b.sample_count(),
                Record::ForgetSeries { ids, .. } => ids.len(),
                Record::DropPartition { .. } | Record::DropShards { .. } => 0,
            },
            #[cfg(test)]
            Self::Panic => 0,
        }
    }
}

//! The compactor: merges the chunks of one (series, UTC day) into one sealed block.
//!
//! Every `interval` it reads the `dirty` marks from a snapshot and picks the days that are due:
//! a day still being written once `merge_after_chunks` chunks arrived since its last merge, any
//! day once it ended `seal_after` ago. For each it reads all of the day's chunks, merges them
//! (the higher write sequence wins a shared timestamp), encodes the result, and hands the
//! writer a replace request: remove exactly the chunks it read, add the merged block with the
//! highest sequence it read. Chunks written meanwhile keep higher sequences and still win, and
//! the writer keeps the day marked dirty for the next pass. The compactor waits for each replace
//! to commit before it plans the next, so it never merges a day twice from one snapshot (a
//! replace request carries up to [`REPLACES_PER_COMMIT`] days, each planned once).
//!
//! I/O is bounded: one (series, day) at a time, and at most [`MAX_MERGES_PER_PASS`] per pass.

use super::partitions::{self, Retention};
use super::record::Record;
use super::writer::{Dirty, Replace, Request, supervised};
use super::{CompactionOptions, Keyspaces, StorageError, keys};
use protocols::{Sample, SeriesId, Tenant, codec};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Most (series, day) merges one pass performs before it sleeps again.
const MAX_MERGES_PER_PASS: usize = 2_000;
/// Most (series, day) replacements committed together, and most bytes of merged blocks.
const REPLACES_PER_COMMIT: usize = 256;
const REPLACE_BYTES_PER_COMMIT: usize = 8 * 1024 * 1024;
/// Most samples in one sealed block; a denser day becomes several blocks.
const MAX_BLOCK_SAMPLES: usize = 65_536;

pub(super) fn start(
    ks: Arc<Keyspaces>,
    queue: mpsc::SyncSender<Request>,
    stop: mpsc::Receiver<()>,
    options: CompactionOptions,
    retention: Retention,
) -> Result<JoinHandle<()>, StorageError> {
    std::thread::Builder::new()
        .name("storage-compactor".into())
        .spawn(move || {
            let health = Arc::clone(&ks.health);
            let clock = ks.clock.clone();
            supervised(&health, "storage compactor", || {
                // `recv_timeout` doubles as the sleep: a message or a disconnect means stop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(options.interval)
                {
                    if let Err(e) = enforce_retention(&ks, &queue, &retention, clock.now_ms()) {
                        tracing::error!(error = %e, "retention pass failed");
                    }
                    if let Err(e) = pass(&ks, &queue, &options, clock.now_ms()) {
                        tracing::error!(error = %e, "compaction pass failed");
                    }
                }
            })
        })
        .map_err(StorageError::Thread)
}

/// Series ids per [`Request::ForgetSeries`]: bounds how long one such request holds the
/// writer (a prefix probe per partition and series).
const FORGET_BATCH: usize = 4_096;

/// Drops every partition wholly older than its tenant's retention at `now_ms`, then removes
/// from the index the tenant's series left without any chunk; returns how many partitions it
/// dropped.
pub(super) fn enforce_retention(
    ks: &Keyspaces,
    queue: &mpsc::SyncSender<Request>,
    retention: &Retention,
    now_ms: i64,
) -> Result<usize, StorageError> {
    let mut dropped = 0;
    let mut emptied: Vec<Tenant> = Vec::new();
    for (tenant, index) in ks.chunks.all() {
        let Some(cutoff) = retention.cutoff(&tenant, now_ms) else {
            continue;
        };
        if partitions::end_of(index) >= cutoff {
            continue;
        }
        // Logged, so that the drop happens at the same point of the log wherever it is
        // applied (a replay, a replica), whatever their clocks say.
        let record = Record::DropPartition {
            tenant: tenant.clone(),
            index,
        };
        match send_record(queue, record, "chunks", "dropping a partition")? {
            Some(n) => {
                dropped += n;
                if !emptied.contains(&tenant) {
                    emptied.push(tenant);
                }
            }
            None => break,
        }
    }
    for tenant in emptied {
        let forgotten = forget_empty_series(ks, queue, &tenant)?;
        if forgotten > 0 {
            tracing::info!(%tenant, series = forgotten, "series left without data removed from the index");
        }
    }
    Ok(dropped)
}

/// Finds the series of `tenant` that hold no chunk in any of its partitions (their data went
/// with dropped partitions) and asks the writer to remove them from the index, which checks
/// again under its own order of writes. Returns how many were removed.
pub(super) fn forget_empty_series(
    ks: &Keyspaces,
    queue: &mpsc::SyncSender<Request>,
    tenant: &Tenant,
) -> Result<usize, StorageError> {
    let partitions: Vec<_> = ks
        .chunks
        .all()
        .into_iter()
        .filter(|(t, _)| t == tenant)
        .filter_map(|(t, index)| ks.chunks.get(&t, index))
        .collect();
    let mut candidates = Vec::new();
    for kv in ks.series.iter() {
        let (key, value) = kv.into_inner()?;
        let Ok(id) = <[u8; 8]>::try_from(key.as_ref()) else {
            continue;
        };
        let Ok(value) = ks.vault.open_index(&key, &value) else {
            continue;
        };
        let Ok((owner, _)) = postcard::from_bytes::<(Tenant, protocols::Labels)>(&value) else {
            continue;
        };
        if &owner != tenant {
            continue;
        }
        let mut empty = true;
        for partition in &partitions {
            if let Some(kv) = partition.prefix(id).next() {
                kv.into_inner()?;
                empty = false;
                break;
            }
        }
        if empty {
            candidates.push(SeriesId(u64::from_be_bytes(id)));
        }
    }
    let mut forgotten = 0;
    for ids in candidates.chunks(FORGET_BATCH) {
        let record = Record::ForgetSeries {
            tenant: tenant.clone(),
            ids: ids.to_vec(),
        };
        match send_record(queue, record, "series", "removing series without data")? {
            Some(n) => forgotten += n,
            None => break,
        }
    }
    Ok(forgotten)
}

/// Has the writer log and apply a retention record; `None` when the writer has stopped.
fn send_record(
    queue: &mpsc::SyncSender<Request>,
    record: Record,
    keyspace: &'static str,
    what: &str,
) -> Result<Option<usize>, StorageError> {
    let (tx, rx) = mpsc::channel();
    if queue.send(Request::Apply { record, reply: tx }).is_err() {
        return Ok(None);
    }
    match rx.recv() {
        Ok(Ok(n)) => Ok(Some(n)),
        Ok(Err(e)) => Err(StorageError::Corrupt {
            keyspace,
            detail: format!("{what} failed: {e}"),
        }),
        Err(_) => Ok(None),
    }
}

/// One pass over the dirty marks; returns how many days were merged.
pub(super) fn pass(
    ks: &Keyspaces,
    queue: &mpsc::SyncSender<Request>,
    options: &CompactionOptions,
    now_ms: i64,
) -> Result<usize, StorageError> {
    let seal_before = now_ms.saturating_sub(duration_ms(options.seal_after));
    let mut due = Vec::new();
    for kv in ks.dirty.iter() {
        let (k, v) = kv.into_inner()?;
        let (Some((series, day)), Some(mark)) = (keys::decode_dirty_key(&k), Dirty::decode(&v))
        else {
            continue;
        };
        if mark.chunks >= options.merge_after_chunks || keys::day_end(day) < seal_before {
            due.push((series, day, mark));
            if due.len() >= MAX_MERGES_PER_PASS {
                break;
            }
        }
    }
    // Plans go to the writer in groups, one commit each: most days after a head flush hold
    // a single chunk, and a commit per mark cleared would keep the writer busy for seconds.
    let mut merged = 0;
    let mut group: Vec<Replace> = Vec::new();
    let mut group_bytes = 0usize;
    let mut due = due.into_iter().peekable();
    while let Some((series, day, mark)) = due.next() {
        let plan = plan_merge(ks, series, day, mark.last_seq)?;
        group_bytes += plan.add.iter().map(|(_, v)| v.len()).sum::<usize>();
        group.push(plan);
        let full = group.len() >= REPLACES_PER_COMMIT || group_bytes >= REPLACE_BYTES_PER_COMMIT;
        if !full && due.peek().is_some() {
            continue;
        }
        let n = group.len();
        let (tx, rx) = mpsc::channel();
        let plans = std::mem::take(&mut group);
        group_bytes = 0;
        if queue.send(Request::Replace { plans, reply: tx }).is_err() {
            break; // the writer has stopped
        }
        match rx.recv() {
            Ok(Ok(())) => merged += n,
            Ok(Err(e)) => {
                return Err(StorageError::Corrupt {
                    keyspace: "chunks",
                    detail: format!("merge commit failed: {e}"),
                });
            }
            Err(_) => break,
        }
    }
    if merged > 0 {
        metrics::counter!("updraft_core_compactions_total").increment(merged as u64);
    }
    Ok(merged)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads every chunk of (series, day) and computes their merge.
fn plan_merge(
    ks: &Keyspaces,
    series: SeriesId,
    day: i64,
    seen_seq: u64,
) -> Result<Replace, StorageError> {
    let from = keys::chunk_key(series, day, 0);
    let to = keys::chunk_key(series, keys::day_end(day), u64::MAX);
    let partition = match ks.tenant_of(series)? {
        Some(tenant) => ks.chunks.get(&tenant, partitions::index_of(day)),
        None => None,
    };
    let Some(partition) = partition else {
        // Dropped by retention (or never written): only the dirty mark is left to clear.
        return Ok(Replace {
            series,
            day_start: day,
            partition: None,
            remove: Vec::new(),
            add: Vec::new(),
            seen_seq,
        });
    };
    let entries = partition
        .range(from..=to)
        .map(|kv| kv.into_inner())
        .collect::<Result<Vec<_>, _>>()?;
    if entries.len() <= 1 {
        // Zero or one chunk (a head flush's, the usual case): nothing to merge or decode;
        // the replace only clears the dirty mark.
        return Ok(Replace {
            series,
            day_start: day,
            partition: Some(partition),
            remove: Vec::new(),
            add: Vec::new(),
            seen_seq,
        });
    }
    let mut remove = Vec::new();
    let mut tagged: Vec<(i64, u64, f64)> = Vec::new();
    let mut max_seq = 0;
    for (k, v) in entries {
        let Some((_, _, seq)) = keys::decode_chunk_key(&k) else {
            continue;
        };
        let key: [u8; 24] = match k.as_ref().try_into() {
            Ok(key) => key,
            Err(_) => continue,
        };
        let opened = ks
            .vault
            .open_chunk(&k, &v)
            .map_err(|e| e.to_string())
            .and_then(|v| codec::decode(&v).map_err(|e| e.to_string()));
        match opened {
            Ok(samples) => tagged.extend(samples.iter().map(|s| (s.timestamp_ms, seq, s.value))),
            Err(e) => {
                // Leave a damaged chunk where it is (reads report it); merge the rest.
                metrics::counter!("updraft_core_corrupt_chunks_total").increment(1);
                tracing::error!(%series, seq, error = %e, "corrupt chunk left out of a merge");
                continue;
            }
        }
        remove.push(key);
        max_seq = max_seq.max(seq);
    }
    let merged = merge_last_wins(tagged);
    let mut add = Vec::new();
    if remove.len() > 1 {
        for block in merged.chunks(MAX_BLOCK_SAMPLES) {
            let bytes = codec::encode(block).map_err(|e| StorageError::Corrupt {
                keyspace: "chunks",
                detail: format!("re-encoding merged samples of {series}: {e}"),
            })?;
            let key = keys::chunk_key(series, block[0].timestamp_ms, max_seq);
            let bytes = ks.vault.seal_chunk(&key, bytes)?;
            add.push((key, bytes));
        }
        metrics::counter!("updraft_core_compaction_chunks_merged_total")
            .increment(remove.len() as u64);
    } else {
        // Zero or one chunk: nothing to merge; the replace only clears the dirty mark.
        remove.clear();
    }
    Ok(Replace {
        series,
        day_start: day,
        partition: Some(partition),
        remove,
        add,
        seen_seq,
    })
}

/// Sorts `(timestamp, sequence, value)` triples and keeps, per timestamp, the value with the
/// highest sequence.
pub(super) fn merge_last_wins(mut tagged: Vec<(i64, u64, f64)>) -> Vec<Sample> {
    tagged.sort_unstable_by_key(|(ts, seq, _)| (*ts, *seq));
    let mut out: Vec<Sample> = Vec::with_capacity(tagged.len());
    for (ts, _, value) in tagged {
        match out.last_mut() {
            Some(last) if last.timestamp_ms == ts => last.value = value,
            _ => out.push(Sample::new(ts, value)),
        }
    }
    out
}

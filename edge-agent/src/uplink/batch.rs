//! Building one `WriteBatch` frame from buffered records (blocking: runs in `spawn_blocking`).

use crate::buffer::record::{self, RecordBody};
use crate::buffer::{Epoch, LogError, LogReader, Offset};
use bytes::Bytes;
use protocols::model::{Labels, Sample};
use protocols::wire::{AgentId, MAX_FRAME_BYTES, Message, SeriesChunk, WriteBatch};
use std::collections::BTreeMap;
use tracing::error;

/// Record payload bytes read per batch. With the ingest thread's 4 MiB record cap this keeps a
/// frame well inside [`MAX_FRAME_BYTES`].
const READ_BUDGET_BYTES: usize = 8 * 1024 * 1024;

/// A frame ready to send and what it covers.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub frame: Bytes,
    pub epoch: Epoch,
    /// End offset of the last record in the batch; also its sequence number.
    pub end: Offset,
    /// Offset of the batch's first record.
    pub start: Offset,
    pub samples: u64,
}

/// What the next stretch of the buffer turned into.
#[derive(Debug)]
pub(crate) enum Prepared {
    Batch(Batch),
    /// Nothing sendable up to `next`: corrupt bytes, undecodable records or a record too large
    /// for one frame. The caller acknowledges up to `next` so the buffer never wedges.
    Skip {
        next: Offset,
        corrupt_bytes: u64,
        dropped_samples: u64,
    },
    /// Nothing durable beyond `from`.
    Empty,
}

/// Reads from `from` and builds one batch of at most `max_samples` samples of one tenant
/// (always at least one whole record, which the ingest thread caps at `max_samples`) from
/// records that start below `limit`, sent as `epoch`.
pub(crate) fn prepare(
    reader: &LogReader,
    agent_id: &AgentId,
    epoch: Epoch,
    (from, limit): (Offset, Offset),
    max_samples: usize,
) -> Result<Prepared, LogError> {
    let chunk = reader.read(from, READ_BUDGET_BYTES)?;
    let mut corrupt_bytes = chunk.corrupt_bytes;
    let mut taken: Vec<RecordBody> = Vec::new();
    let mut samples = 0;
    // Where the batch ends: after the last record taken, or after everything read when all of
    // it was taken (so skipped bytes at the end are covered as well).
    let mut end = chunk.next;
    for rec in &chunk.records {
        if rec.start >= limit {
            end = rec.start;
            break;
        }
        let body = match record::decode(&rec.payload) {
            Ok(body) => body,
            Err(e) => {
                // Its checksum matched, so the bytes are what we wrote: a bug or a version
                // mismatch, not disk damage. Skip it rather than wedge the uplink.
                error!(offset = %rec.start, error = %e, "skipping undecodable buffer record");
                corrupt_bytes += rec.end.0 - rec.start.0;
                continue;
            }
        };
        let n = body.sample_count();
        let same_tenant = taken
            .first()
            .is_none_or(|first| first.tenant == body.tenant);
        if !taken.is_empty() && (samples + n > max_samples || !same_tenant) {
            end = rec.start;
            break;
        }
        samples += n;
        taken.push(body);
    }
    let records = taken.len();
    let first_samples = taken.first().map_or(0, RecordBody::sample_count);
    if taken.is_empty() {
        return Ok(if end > from {
            Prepared::Skip {
                next: end,
                corrupt_bytes,
                dropped_samples: 0,
            }
        } else {
            Prepared::Empty
        });
    }
    let frame = encode(agent_id, epoch, end, taken);
    if frame.len() > MAX_FRAME_BYTES && records > 1 {
        // Try again with the first record alone (the limit then admits nothing more).
        return prepare(reader, agent_id, epoch, (from, limit), first_samples);
    }
    if frame.len() > MAX_FRAME_BYTES {
        // Unreachable for records within the ingest caps (the read budget keeps batches near
        // half a frame); possible only for one record built from an enormous publish. A record
        // is the smallest unit that can be acknowledged, so it is given up rather than wedge.
        error!(
            offset = %from,
            frame_bytes = frame.len(),
            samples,
            "buffered samples do not fit in one frame; dropping them"
        );
        return Ok(Prepared::Skip {
            next: end,
            corrupt_bytes,
            dropped_samples: samples as u64,
        });
    }
    Ok(Prepared::Batch(Batch {
        start: from,
        frame: Bytes::from(frame),
        epoch,
        end,
        samples: samples as u64,
    }))
}

fn encode(agent_id: &AgentId, epoch: Epoch, end: Offset, records: Vec<RecordBody>) -> Vec<u8> {
    let mut tenant = None;
    // Merge series across records, keeping arrival order; encoding sorts each series by
    // timestamp and keeps the later arrival of two samples with one timestamp.
    let mut merged: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    for body in records {
        tenant.get_or_insert(body.tenant);
        for s in body.series {
            merged.entry(s.labels).or_default().extend(s.samples);
        }
    }
    let series = merged
        .into_iter()
        .filter_map(|(labels, samples)| {
            let count = samples.len();
            match SeriesChunk::encode(labels, samples) {
                Ok(chunk) => Some(chunk),
                Err(e) => {
                    // Cannot happen for sorted, deduplicated input within the codec's size
                    // limit (batches are far smaller); never wedge the uplink over it.
                    error!(error = %e, samples = count, "could not encode a series; dropping it");
                    None
                }
            }
        })
        .collect();
    Message::WriteBatch(WriteBatch {
        agent_id: agent_id.clone(),
        epoch: epoch.0,
        sequence: end.0,
        tenant: tenant.unwrap_or_default(),
        series,
    })
    .encode()
}

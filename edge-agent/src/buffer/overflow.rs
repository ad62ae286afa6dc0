//! The buffer's byte bound (`--buffer-max-bytes`) and what happens to a rule's new messages
//! when it is reached (the rule's `overflow` key).
//!
//! "Used" is everything appended and not yet acknowledged (`writer end - acked cursor`) plus
//! what the ingest thread holds for its next record. Before a mapped message is buffered, the
//! ingest thread asks [`Bound::admit`]; if used plus the message would pass the bound, the
//! policy of the rule that matched the message decides:
//!
//! - [`Overflow::RejectNew`] (the default): the message is not buffered. Its samples are
//!   counted as dropped (`buffer_full_reject_new`). Nothing already buffered is touched, so
//!   the oldest data is never lost; new data is lost instead until the uplink frees space.
//! - [`Overflow::DropOldest`]: the oldest whole segment is given up (the ack cursor moves past
//!   it, which deletes the file) until the message fits. Its samples are counted as dropped
//!   (`buffer_full_drop_oldest`).
//! - [`Overflow::DownsampleBacklog`]: the raw samples of the oldest segment are replaced by
//!   per-minute aggregates appended at the head of the buffer, then the segment is given up.
//!   The raw samples are counted as dropped (`buffer_full_downsample`). If the aggregates
//!   would not save at least half of the segment (sparse series), the segment is dropped as
//!   with `drop_oldest` (and counted under that reason).
//!
//! Eviction works on whole segments, and a segment holds every rule's data in arrival order:
//! a `drop_oldest` or `downsample_backlog` rule can evict the oldest data of any rule. Give
//! every rule `reject_new` if no buffered sample may ever be evicted. If nothing can be
//! evicted (the oldest data is in the segment being written), the message is rejected and
//! counted as `buffer_full_reject_new`.
//!
//! # Aggregates
//!
//! For each series and each minute (`[t, t + 60 s)`, aligned to the Unix epoch) holding raw
//! samples, five series are written with the same labels and the metric name suffixed:
//! `<metric>:min_1m`, `<metric>:max_1m`, `<metric>:avg_1m`, `<metric>:last_1m` (the value with
//! the latest timestamp) and `<metric>:count_1m`. Each carries the timestamp of the minute's
//! last raw sample, so two partial aggregates of one minute (the minute straddled two
//! segments) are both kept rather than overwriting each other. Aggregates are ordinary
//! records (`record.rs`): the on-disk format does not change. Series that already are
//! aggregates are not aggregated again: when their segment becomes the oldest, they are
//! dropped and counted as `buffer_full_drop_oldest`.
//!
//! # Crash safety
//!
//! Aggregates are appended and fsynced before the cursor moves past the raw segment: a crash in
//! between leaves both, and both are sent (duplicates are harmless, loss is not).

use super::record::{self, RecordBody};
use super::{LogError, LogReader, LogWriter, Offset};
use crate::telemetry::{self, DropReason};
use metrics::{Counter, counter};
use protocols::model::{Labels, Sample, Tenant};
use protocols::wire::SeriesSamples;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use tracing::{error, warn};

/// Width of one downsampling interval.
pub(crate) const DOWNSAMPLE_INTERVAL_MS: i64 = 60_000;
/// Suffix of every aggregate series' name after the aggregate's name.
const INTERVAL_SUFFIX: &str = "_1m";
const AGGREGATES: [&str; 5] = ["min", "max", "avg", "last", "count"];
/// Samples per aggregate record (far below the batch and record limits).
const AGGREGATE_RECORD_SAMPLES: usize = 5_000;
/// Segments one message may evict; bounds the work a single publish can cause.
const MAX_EVICTIONS_PER_MESSAGE: usize = 16;

/// A mapping rule's policy for a full buffer (the rule's `overflow` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Refuse the rule's new messages while the buffer is full (nothing buffered is lost).
    #[default]
    RejectNew,
    /// Give up the oldest buffered segment to make room.
    DropOldest,
    /// Replace the oldest segment's raw samples by per-minute aggregates to make room.
    DownsampleBacklog,
}

impl Overflow {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RejectNew => "reject_new",
            Self::DropOldest => "drop_oldest",
            Self::DownsampleBacklog => "downsample_backlog",
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The byte bound and its counters; owned by the ingest thread (the buffer's only writer).
pub(crate) struct Bound {
    max_bytes: u64,
    rejected: Counter,
    dropped: Counter,
    downsampled: Counter,
    corrupt: Counter,
}

impl Bound {
    pub(crate) fn new(max_bytes: u64) -> Self {
        metrics::gauge!(telemetry::BUFFER_MAX_BYTES).set(max_bytes as f64);
        let reason = |r: DropReason| counter!(telemetry::SAMPLES_DROPPED, "reason" => r.as_str());
        Self {
            max_bytes,
            rejected: reason(DropReason::BufferFullRejectNew),
            dropped: reason(DropReason::BufferFullDropOldest),
            downsampled: reason(DropReason::BufferFullDownsample),
            corrupt: counter!(telemetry::BUFFER_CORRUPT_BYTES),
        }
    }

    /// Whether a message of `samples` samples taking about `bytes` may be buffered, making room
    /// first as `policy` says. `pending_bytes` is what the caller holds for its next record.
    /// A refusal has been counted. Errors are buffer failures (the writer is then poisoned).
    pub(crate) fn admit(
        &mut self,
        policy: Overflow,
        samples: u64,
        bytes: u64,
        pending_bytes: u64,
        writer: &mut LogWriter,
        reader: &LogReader,
    ) -> Result<bool, LogError> {
        let max_bytes = self.max_bytes;
        let fits = |writer: &LogWriter| {
            let used = writer.end().0.saturating_sub(reader.acked().0) + pending_bytes;
            used.saturating_add(bytes) <= max_bytes
        };
        if fits(writer) {
            return Ok(true);
        }
        if policy != Overflow::RejectNew {
            for _ in 0..MAX_EVICTIONS_PER_MESSAGE {
                if !self.evict_oldest(policy, writer, reader)? {
                    break;
                }
                if fits(writer) {
                    return Ok(true);
                }
            }
        }
        self.rejected.increment(samples);
        Ok(false)
    }

    /// Gives up the oldest segment (downsampling it first if asked). False if there is only
    /// the segment being written.
    fn evict_oldest(
        &self,
        policy: Overflow,
        writer: &mut LogWriter,
        reader: &LogReader,
    ) -> Result<bool, LogError> {
        let Some(&cut) = reader.segment_starts().get(1) else {
            return Ok(false);
        };
        // The cut is the start of a later segment, so it lies at or below the writer's end;
        // the fsync makes it durable, which acknowledging requires.
        writer.sync()?;
        let from = reader.acked();
        if cut <= from {
            return Ok(true);
        }
        let (bodies, corrupt) = read_range(reader, from, cut)?;
        self.corrupt.increment(corrupt);
        let raw: u64 = bodies.iter().map(|b| b.sample_count() as u64).sum();
        // Raw samples replaced by aggregates; the rest of `raw` is dropped.
        let mut replaced = 0;
        if policy == Overflow::DownsampleBacklog {
            let payloads = downsample(&bodies);
            let agg_bytes: u64 = payloads.iter().map(|p| p.len() as u64 + 8).sum();
            if agg_bytes.saturating_mul(2) <= cut.0 - from.0 {
                for p in &payloads {
                    writer.append(p)?;
                }
                writer.sync()?;
                // Aggregates found here are dropped, not aggregated again.
                replaced = bodies
                    .iter()
                    .flat_map(|b| &b.series)
                    .filter(|s| !is_aggregate(&s.labels))
                    .map(|s| s.samples.len() as u64)
                    .sum();
            }
        }
        reader.ack(cut)?;
        self.downsampled.increment(replaced);
        self.dropped.increment(raw - replaced);
        warn!(from = %from, to = %cut, samples = raw, policy = %policy,
            "buffer full: gave up the oldest segment");
        Ok(true)
    }
}

/// Decodes the records in `[from, to)`; returns them and the bytes that could not be read.
fn read_range(
    reader: &LogReader,
    from: Offset,
    to: Offset,
) -> Result<(Vec<RecordBody>, u64), LogError> {
    let mut bodies = Vec::new();
    let mut corrupt = 0;
    let mut pos = from;
    while pos < to {
        let chunk = reader.read(pos, 1024 * 1024)?;
        corrupt += chunk.corrupt_bytes;
        for rec in chunk.records.into_iter().take_while(|r| r.start < to) {
            match record::decode(&rec.payload) {
                Ok(body) => bodies.push(body),
                Err(e) => {
                    error!(offset = %rec.start, error = %e, "skipping undecodable buffer record");
                    corrupt += rec.end.0 - rec.start.0;
                }
            }
        }
        if chunk.next <= pos {
            break;
        }
        pos = chunk.next;
    }
    Ok((bodies, corrupt))
}

#[derive(Debug, Clone, Copy)]
struct Agg {
    min: f64,
    max: f64,
    sum: f64,
    count: u64,
    last: Sample,
}

/// Whether `labels` names an aggregate this module wrote.
fn is_aggregate(labels: &Labels) -> bool {
    let name = labels.metric_name();
    name.strip_suffix(INTERVAL_SUFFIX)
        .and_then(|n| n.rsplit_once(':'))
        .is_some_and(|(_, agg)| AGGREGATES.contains(&agg))
}

/// Per-minute aggregates of the raw series in `bodies`, encoded as record payloads.
pub(crate) fn downsample(bodies: &[RecordBody]) -> Vec<Vec<u8>> {
    let mut groups: BTreeMap<(&Tenant, &Labels, i64), Agg> = BTreeMap::new();
    for body in bodies {
        for s in &body.series {
            if is_aggregate(&s.labels) {
                continue;
            }
            for sample in &s.samples {
                let minute = sample.timestamp_ms.div_euclid(DOWNSAMPLE_INTERVAL_MS);
                let v = sample.value;
                groups
                    .entry((&body.tenant, &s.labels, minute))
                    .and_modify(|a| {
                        a.min = a.min.min(v);
                        a.max = a.max.max(v);
                        a.sum += v;
                        a.count += 1;
                        // Later arrivals win ties, as at the core.
                        if sample.timestamp_ms >= a.last.timestamp_ms {
                            a.last = *sample;
                        }
                    })
                    .or_insert(Agg {
                        min: v,
                        max: v,
                        sum: v,
                        count: 1,
                        last: *sample,
                    });
            }
        }
    }
    let mut per_tenant: BTreeMap<&Tenant, BTreeMap<Labels, Vec<Sample>>> = BTreeMap::new();
    for ((tenant, labels, _), a) in groups {
        let ts = a.last.timestamp_ms;
        let values = [
            a.min,
            a.max,
            a.sum / a.count as f64,
            a.last.value,
            a.count as f64,
        ];
        for (agg, value) in AGGREGATES.iter().zip(values) {
            let name = format!("{}:{agg}{INTERVAL_SUFFIX}", labels.metric_name());
            let others = labels
                .iter()
                .filter(|l| l.name != protocols::model::METRIC_NAME_LABEL)
                .map(|l| (l.name.clone(), l.value.clone()));
            // Only a name near the length limit fails; its raw samples are counted as gone.
            if let Ok(agg_labels) = Labels::from_metric(&name, others) {
                per_tenant
                    .entry(tenant)
                    .or_default()
                    .entry(agg_labels)
                    .or_default()
                    .push(Sample::new(ts, value));
            }
        }
    }
    let mut payloads = Vec::new();
    for (tenant, series) in per_tenant {
        let mut batch: Vec<SeriesSamples> = Vec::new();
        let mut n = 0;
        for (labels, samples) in series {
            n += samples.len();
            batch.push(SeriesSamples { labels, samples });
            if n >= AGGREGATE_RECORD_SAMPLES {
                payloads.extend(record::encode(tenant, &batch).ok());
                batch.clear();
                n = 0;
            }
        }
        if !batch.is_empty() {
            payloads.extend(record::encode(tenant, &batch).ok());
        }
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{LogOptions, open};

    fn series(name: &str, samples: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            labels: Labels::from_metric(name, [("device", "d1")]).expect("labels"),
            samples: samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
        }
    }

    #[test]
    fn downsample_gives_min_max_avg_last_count_per_minute() {
        let body = RecordBody {
            tenant: Tenant::default(),
            series: vec![
                series(
                    "temp",
                    &[(0, 3.0), (30_000, 1.0), (20_000, 5.0), (60_000, 7.0)],
                ),
                series("temp:min_1m", &[(0, 1.0)]),
            ],
        };
        let payloads = downsample(&[body]);
        let mut got = BTreeMap::new();
        for p in payloads {
            for s in record::decode(&p).expect("decode").series {
                assert_eq!(s.labels.get("device"), Some("d1"));
                got.insert(s.labels.metric_name().to_owned(), s.samples);
            }
        }
        let values = |name: &str| -> Vec<(i64, f64)> {
            got[name]
                .iter()
                .map(|s| (s.timestamp_ms, s.value))
                .collect()
        };
        assert_eq!(
            got.len(),
            5,
            "aggregates of aggregates are not written: {got:?}"
        );
        assert_eq!(values("temp:min_1m"), [(30_000, 1.0), (60_000, 7.0)]);
        assert_eq!(values("temp:max_1m"), [(30_000, 5.0), (60_000, 7.0)]);
        assert_eq!(values("temp:avg_1m"), [(30_000, 3.0), (60_000, 7.0)]);
        assert_eq!(values("temp:last_1m"), [(30_000, 1.0), (60_000, 7.0)]);
        assert_eq!(values("temp:count_1m"), [(30_000, 3.0), (60_000, 1.0)]);
    }

    fn fill(writer: &mut LogWriter, records: usize, first_ts: i64) {
        for i in 0..records {
            let ts = first_ts + i as i64 * 1000;
            let samples: Vec<(i64, f64)> = (0..50).map(|k| (ts + k, k as f64)).collect();
            let payload =
                record::encode(&Tenant::default(), &[series("v", &samples)]).expect("encode");
            writer.append(&payload).expect("append");
        }
        writer.sync().expect("sync");
    }

    #[test]
    fn each_policy_keeps_the_bound_and_counts() {
        for policy in [
            Overflow::RejectNew,
            Overflow::DropOldest,
            Overflow::DownsampleBacklog,
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let options = LogOptions {
                segment_max_bytes: 8 * 1024,
            };
            let (mut writer, reader, _) = open(dir.path(), options).expect("open");
            fill(&mut writer, 60, 0);
            let used = writer.end().0 - reader.acked().0;
            let mut bound = Bound::new(used);
            let before = reader.acked();
            let admitted = bound
                .admit(policy, 1, 100, 0, &mut writer, &reader)
                .expect("admit");
            let after = writer.end().0 - reader.acked().0;
            match policy {
                Overflow::RejectNew => {
                    assert!(!admitted);
                    assert_eq!(reader.acked(), before, "nothing buffered is touched");
                }
                _ => {
                    assert!(admitted, "{policy}");
                    assert!(reader.acked() > before, "{policy}: the oldest segment went");
                    assert!(after + 100 <= used, "{policy}: room was made");
                }
            }
            if policy == Overflow::DownsampleBacklog {
                let tail = reader.read(before, usize::MAX).expect("read");
                let names: Vec<String> = tail
                    .records
                    .iter()
                    .filter_map(|r| record::decode(&r.payload).ok())
                    .flat_map(|b| b.series)
                    .map(|s| s.labels.metric_name().to_owned())
                    .collect();
                assert!(names.iter().any(|n| n == "v:count_1m"), "{names:?}");
            }
        }
    }
}

//! What the writer logs: one WAL record per write request, and how replay reads it back.
//!
//! # Layout (each record a [`seglog`] payload)
//!
//! Every record starts with `protocols::wire::WIRE_VERSION` and a kind byte:
//!
//! | kind | what | body |
//! |---|---|---|
//! | `1` | an edge agent's [`WriteBatch`] | its wire frame as it came over QUIC (postcard, codec chunks) |
//! | `0x80` | a [`SampleBatch`] from the HTTP ingest APIs | the layout below |
//! | `0x81` | a retention drop of one partition | tenant (as below), partition index (i64 LE) |
//! | `0x82` | a removal of series without data | tenant, uvarint count, series ids (u64 LE each) |
//! | `0x83` | a retention drop of one partition's series of a shard range (a cluster's group) | tenant, partition index (i64 LE), first and last shard (u16 LE each) |
//!
//! Sample batches:
//!
//! ```text
//! tenant:  uvarint length, UTF-8 bytes
//! series:  uvarint count, then per series:
//!   labels:  uvarint count, then per label: uvarint length, name, uvarint length, value
//!   samples: uvarint count, then per sample: timestamp i64 LE, value f64 bits LE (16 bytes)
//! ```
//!
//! Samples stay as they arrived (sorted, one per timestamp) instead of becoming a codec chunk:
//! a remote_write request carries a few samples per series, which the head keeps decoded
//! anyway, so encoding them for the WAL and decoding them again in the writer was work for
//! nothing. 16 bytes a sample costs more WAL than a chunk, but the WAL only holds what the head
//! holds (it is released at each head flush).
//!
//! A write record holds only what was **admitted**: the writer takes every decision that
//! reads the clock (retention), the node's settings (limits) or node-wide counters (series per
//! tenant) when it accepts a write, before logging it, and a refused series never reaches the
//! log. Applying a record therefore depends only on the record and the state it is applied to,
//! so a replay, or another replica applying the same log, ends in the same data. Retention
//! drops and series removals are decided the same way (by the retention pass, with its clock
//! and settings) and logged as records of their own, so they happen at the same point of the
//! log everywhere. Records written before admission existed (the same kinds `1` and `0x80`) are
//! applied as admitted too: at worst a series refused at their first apply is stored by a
//! replay, which loses nothing.
//!
//! Kinds from `0x80` on are the core's own and never travel on the wire. Compatibility: a new
//! layout gets a new kind; replay keeps reading the old ones. A record of an unknown kind is
//! skipped and counted as corrupt, as before.

use super::SampleBatch;
use protocols::wire::{Message, WIRE_VERSION, WriteBatch};
use protocols::{Label, Labels, Sample, SeriesId, Tenant};

/// The kind byte of a [`SampleBatch`] record.
const KIND_SAMPLES: u8 = 0x80;
/// The kind byte of a [`Record::DropPartition`].
const KIND_DROP_PARTITION: u8 = 0x81;
/// The kind byte of a [`Record::ForgetSeries`].
const KIND_FORGET_SERIES: u8 = 0x82;
/// The kind byte of a [`Record::DropShards`].
const KIND_DROP_SHARDS: u8 = 0x83;
const SAMPLE_BYTES: usize = 16;

/// One WAL record: an admitted write, or a decision of the retention pass.
#[derive(Debug)]
pub(crate) enum Record {
    Write(Batch),
    /// Drop partition `index` of `tenant` (wholly past its retention when it was decided).
    DropPartition {
        tenant: Tenant,
        index: i64,
    },
    /// Drop what partition `index` of `tenant` holds of the series of shards
    /// `first_shard..=last_shard` (a cluster group's retention: the partition is shared by
    /// every group the node holds).
    DropShards {
        tenant: Tenant,
        index: i64,
        first_shard: u16,
        last_shard: u16,
    },
    /// Remove these series of `tenant` from the index if they hold no sample when applied.
    ForgetSeries {
        tenant: Tenant,
        ids: Vec<SeriesId>,
    },
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Write(b) => b.encode(),
            Self::DropPartition { tenant, index } => {
                let mut out = Vec::with_capacity(2 + 10 + tenant.as_str().len() + 8);
                out.extend_from_slice(&[WIRE_VERSION, KIND_DROP_PARTITION]);
                put_bytes(&mut out, tenant.as_str().as_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out
            }
            Self::DropShards {
                tenant,
                index,
                first_shard,
                last_shard,
            } => {
                let mut out = Vec::with_capacity(2 + 10 + tenant.as_str().len() + 12);
                out.extend_from_slice(&[WIRE_VERSION, KIND_DROP_SHARDS]);
                put_bytes(&mut out, tenant.as_str().as_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&first_shard.to_le_bytes());
                out.extend_from_slice(&last_shard.to_le_bytes());
                out
            }
            Self::ForgetSeries { tenant, ids } => {
                let mut out = Vec::with_capacity(2 + 20 + tenant.as_str().len() + ids.len() * 8);
                out.extend_from_slice(&[WIRE_VERSION, KIND_FORGET_SERIES]);
                put_bytes(&mut out, tenant.as_str().as_bytes());
                put_uvarint(&mut out, ids.len() as u64);
                for id in ids {
                    out.extend_from_slice(&id.0.to_le_bytes());
                }
                out
            }
        }
    }

    /// Reads a record written by [`Record::encode`].
    pub fn decode(record: &[u8]) -> Result<Self, RecordError> {
        match record {
            [WIRE_VERSION, KIND_DROP_PARTITION, body @ ..] => {
                let mut r = Reader(body);
                let tenant = r.tenant()?;
                let index = i64::from_le_bytes(r.array()?);
                r.end()?;
                Ok(Self::DropPartition { tenant, index })
            }
            [WIRE_VERSION, KIND_DROP_SHARDS, body @ ..] => {
                let mut r = Reader(body);
                let tenant = r.tenant()?;
                let index = i64::from_le_bytes(r.array()?);
                let first_shard = u16::from_le_bytes(r.array()?);
                let last_shard = u16::from_le_bytes(r.array()?);
                r.end()?;
                Ok(Self::DropShards {
                    tenant,
                    index,
                    first_shard,
                    last_shard,
                })
            }
            [WIRE_VERSION, KIND_FORGET_SERIES, body @ ..] => {
                let mut r = Reader(body);
                let tenant = r.tenant()?;
                let n = r.count(8)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(SeriesId(u64::from_le_bytes(r.array()?)));
                }
                r.end()?;
                Ok(Self::ForgetSeries { tenant, ids })
            }
            _ => Batch::decode(record).map(Self::Write),
        }
    }
}

/// A batch the writer logs and applies.
#[derive(Debug)]
pub(crate) enum Batch {
    /// From an edge agent: codec chunks, an agent offset.
    Chunks(WriteBatch),
    /// From the HTTP ingest APIs: decoded samples, no agent.
    Samples(SampleBatch),
}

impl Batch {
    pub fn sample_count(&self) -> usize {
        match self {
            Self::Chunks(b) => b.sample_count(),
            Self::Samples(b) => b.sample_count(),
        }
    }

    /// The WAL record of the batch.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Chunks(b) => b.encode_frame(),
            Self::Samples(b) => encode_samples(b),
        }
    }

    /// Reads a record written by [`Batch::encode`].
    pub fn decode(record: &[u8]) -> Result<Self, RecordError> {
        match record {
            [WIRE_VERSION, KIND_SAMPLES, body @ ..] => decode_samples(body).map(Self::Samples),
            _ => match Message::decode(record) {
                Ok(Message::WriteBatch(b)) => Ok(Self::Chunks(b)),
                Ok(_) => Err(RecordError::Kind),
                Err(e) => Err(RecordError::Frame(e)),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("not a write batch")]
    Kind,
    #[error("{0}")]
    Frame(#[from] protocols::wire::WireError),
    #[error("sample batch record ends early")]
    Truncated,
    #[error("sample batch record: {0}")]
    Invalid(String),
}

fn encode_samples(b: &SampleBatch) -> Vec<u8> {
    let labels: usize = b
        .series
        .iter()
        .flat_map(|(labels, _)| labels.iter())
        .map(|l| l.name.len() + l.value.len() + 4)
        .sum();
    let samples: usize = b.series.iter().map(|(_, s)| s.len()).sum();
    let mut out = Vec::with_capacity(
        2 + 10 + b.tenant.as_str().len() + b.series.len() * 10 + labels + samples * SAMPLE_BYTES,
    );
    out.extend_from_slice(&[WIRE_VERSION, KIND_SAMPLES]);
    put_bytes(&mut out, b.tenant.as_str().as_bytes());
    put_uvarint(&mut out, b.series.len() as u64);
    for (labels, samples) in &b.series {
        put_uvarint(&mut out, labels.len() as u64);
        for l in labels.iter() {
            put_bytes(&mut out, l.name.as_bytes());
            put_bytes(&mut out, l.value.as_bytes());
        }
        put_uvarint(&mut out, samples.len() as u64);
        for s in samples {
            out.extend_from_slice(&s.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&s.value.to_bits().to_le_bytes());
        }
    }
    out
}

fn decode_samples(body: &[u8]) -> Result<SampleBatch, RecordError> {
    let mut r = Reader(body);
    let tenant = r.tenant()?;
    let count = r.count(1)?;
    let mut series = Vec::with_capacity(count);
    for _ in 0..count {
        let n = r.count(2)?;
        let mut raw = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.string()?;
            raw.push(Label::new(name, r.string()?));
        }
        let labels = Labels::try_from(raw).map_err(|e| RecordError::Invalid(e.to_string()))?;
        let n = r.count(SAMPLE_BYTES)?;
        let bytes = r.take(n * SAMPLE_BYTES)?;
        let samples = bytes
            .chunks_exact(SAMPLE_BYTES)
            .map(|s| {
                let (ts, value) = s.split_at(8);
                // Both halves are 8 bytes: `chunks_exact(16)` split at 8.
                let ts = i64::from_le_bytes(ts.try_into().unwrap_or_default());
                let value = u64::from_le_bytes(value.try_into().unwrap_or_default());
                Sample::new(ts, f64::from_bits(value))
            })
            .collect();
        series.push((labels, samples));
    }
    r.end()?;
    Ok(SampleBatch { tenant, series })
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn uvarint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(RecordError::Truncated)?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(RecordError::Invalid("varint longer than 10 bytes".into()))
    }

    /// A count of items of at least `min_bytes` each: refused when the rest cannot hold them,
    /// so a damaged count never makes a huge allocation.
    fn count(&mut self, min_bytes: usize) -> Result<usize, RecordError> {
        let n = self.uvarint()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_bytes) <= self.0.len() => Ok(n),
            _ => Err(RecordError::Truncated),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.0.len() {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| RecordError::Truncated)
    }

    fn tenant(&mut self) -> Result<Tenant, RecordError> {
        Tenant::new(self.string()?).map_err(|e| RecordError::Invalid(e.to_string()))
    }

    /// Refuses bytes after the record's last field.
    fn end(&self) -> Result<(), RecordError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(RecordError::Invalid(format!(
                "{n} bytes after the record's end"
            ))),
        }
    }

    fn string(&mut self) -> Result<String, RecordError> {
        let n = self.count(1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| RecordError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch() -> SampleBatch {
        let a = Labels::from_metric("cpu", [("host", "a"), ("mode", "user")]).expect("valid");
        let b = Labels::from_metric("temp", [("site", "s1")]).expect("valid");
        SampleBatch {
            tenant: Tenant::new("acme").expect("valid"),
            series: vec![
                (
                    a,
                    vec![
                        Sample::new(i64::MIN, f64::from_bits(0x7ff0_0000_0000_0002)),
                        Sample::new(0, -0.0),
                        Sample::new(i64::MAX, f64::INFINITY),
                    ],
                ),
                (b, vec![Sample::new(1_700_000_000_000, 21.5)]),
            ],
        }
    }

    fn bits(b: &SampleBatch) -> Vec<(Labels, Vec<(i64, u64)>)> {
        b.series
            .iter()
            .map(|(l, s)| {
                let s = s
                    .iter()
                    .map(|x| (x.timestamp_ms, x.value.to_bits()))
                    .collect();
                (l.clone(), s)
            })
            .collect()
    }

    #[test]
    fn sample_batches_round_trip_bit_exact() {
        let b = batch();
        let Batch::Samples(back) = Batch::decode(&Batch::Samples(b.clone()).encode()).expect("ok")
        else {
            panic!("decoded another kind")
        };
        assert_eq!(back.tenant, b.tenant);
        assert_eq!(bits(&back), bits(&b));
    }

    #[test]
    fn agent_batches_decode_as_before() {
        let labels = Labels::from_metric("temp", [("site", "s1")]).expect("valid");
        let wb = WriteBatch {
            agent_id: protocols::wire::AgentId("edge-1".into()),
            epoch: 3,
            sequence: 9,
            tenant: Tenant::default(),
            series: vec![
                protocols::wire::SeriesChunk::encode(labels, vec![Sample::new(1, 2.0)])
                    .expect("encodes"),
            ],
        };
        let frame = Batch::Chunks(wb.clone()).encode();
        assert_eq!(
            frame,
            wb.encode_frame(),
            "the WAL holds the wire frame itself"
        );
        let Batch::Chunks(back) = Batch::decode(&frame).expect("ok") else {
            panic!("decoded another kind")
        };
        assert_eq!(back, wb);
    }

    #[test]
    fn damaged_sample_records_are_refused() {
        let record = Batch::Samples(batch()).encode();
        for cut in 2..record.len() {
            assert!(Batch::decode(&record[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = record.clone();
        extra.push(0);
        assert!(Batch::decode(&extra).is_err());
        // A count far beyond the record is refused before allocating.
        let mut huge = vec![WIRE_VERSION, KIND_SAMPLES];
        put_bytes(&mut huge, b"acme");
        put_uvarint(&mut huge, u64::MAX);
        assert!(matches!(Batch::decode(&huge), Err(RecordError::Truncated)));
    }

    #[test]
    fn retention_records_round_trip_and_refuse_damage() {
        let tenant = Tenant::new("acme").expect("valid");
        let drop = Record::DropPartition {
            tenant: tenant.clone(),
            index: -3,
        };
        let forget = Record::ForgetSeries {
            tenant: tenant.clone(),
            ids: vec![SeriesId(1), SeriesId(u64::MAX)],
        };
        for record in [drop, forget] {
            let bytes = record.encode();
            let back = Record::decode(&bytes).expect("decodes");
            assert_eq!(back.encode(), bytes, "{back:?}");
            for cut in 2..bytes.len() {
                assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut extra = bytes.clone();
            extra.push(0);
            assert!(Record::decode(&extra).is_err());
        }
        let Record::Write(Batch::Samples(b)) =
            Record::decode(&Record::Write(Batch::Samples(batch())).encode()).expect("ok")
        else {
            panic!("decoded another kind")
        };
        assert_eq!(bits(&b), bits(&batch()));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for kind in [KIND_SAMPLES, KIND_DROP_PARTITION, KIND_FORGET_SERIES] {
                let mut record = vec![WIRE_VERSION, kind];
                record.extend_from_slice(&bytes);
                let _ = Record::decode(&record);
            }
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn random_batches_round_trip(
            series in proptest::collection::vec(
                (0u8..4, proptest::collection::vec((any::<i64>(), any::<u64>()), 0..20)),
                0..6,
            )
        ) {
            let b = SampleBatch {
                tenant: Tenant::default(),
                series: series
                    .into_iter()
                    .map(|(k, s)| {
                        let labels = Labels::from_metric("m", [("k", k.to_string())]).expect("valid");
                        (labels, s.into_iter().map(|(t, v)| Sample::new(t, f64::from_bits(v))).collect())
                    })
                    .collect(),
            };
            let Ok(Batch::Samples(back)) = Batch::decode(&Batch::Samples(b.clone()).encode()) else {
                panic!("did not decode");
            };
            prop_assert_eq!(bits(&back), bits(&b));
        }
    }
}

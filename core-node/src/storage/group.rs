//! Storage's side of a cluster's shard group: apply its committed entries without the node's
//! WAL, read its applied position, build and install its snapshots (see
//! `writer::group` for how each works and why a snapshot read while writes go on is still
//! exact once the log after it is applied).
//!
//! A snapshot is the group's content, not its history: per series of the group's shards its
//! tenant, labels and every sample as the read path returns it, in sample-batch records of at
//! most [`SNAPSHOT_RECORD_SAMPLES`] samples, plus the group's applied position and agent
//! offsets. The receiver applies the records with the same code as any write, so it builds
//! its own chunks, postings and (with encryption at rest) seals them with its own keys. Layout
//! (postcard): a format byte, the applied position, the offsets, then each record as
//! `storage::record` encodes it.

use super::record::{Batch, Record};
pub(crate) use super::writer::group::{Admitted, GroupState};
use super::writer::{Request, group::GroupRequest};
use super::{SampleBatch, Storage, StorageError, keys};
use protocols::model::ShardId;
use protocols::{Labels, SeriesId, Tenant};
use query::DataSource;
use std::ops::RangeInclusive;
use std::sync::{Arc, mpsc};

/// Most samples in one record of a snapshot.
pub(crate) const SNAPSHOT_RECORD_SAMPLES: usize = 65_536;
const SNAPSHOT_FORMAT: u8 = 1;

/// A shard group's content at (or, for entries applied while it was read, after) its
/// applied position.
#[derive(Debug)]
pub(crate) struct GroupSnapshot {
    pub state: GroupState,
    pub records: Vec<Record>,
}

type Encoded = (u8, Option<Vec<u8>>, Vec<(String, (u64, u64))>, Vec<Vec<u8>>);

impl GroupSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let encoded: Encoded = (
            SNAPSHOT_FORMAT,
            self.state.applied.clone(),
            self.state.offsets.clone(),
            self.records.iter().map(Record::encode).collect(),
        );
        // Serialising owned, serde-derived values into a Vec cannot fail.
        postcard::to_allocvec(&encoded).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let bad = |detail: String| StorageError::Corrupt {
            keyspace: "snapshot",
            detail,
        };
        let (format, applied, offsets, records): Encoded =
            postcard::from_bytes(bytes).map_err(|e| bad(format!("undecodable snapshot: {e}")))?;
        if format != SNAPSHOT_FORMAT {
            return Err(bad(format!("snapshot format {format} is not known here")));
        }
        let records = records
            .iter()
            .map(|r| Record::decode(r).map_err(|e| bad(format!("snapshot record: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            state: GroupState { applied, offsets },
            records,
        })
    }

    /// Samples held, over every record.
    pub fn sample_count(&self) -> usize {
        self.records
            .iter()
            .map(|r| match r {
                Record::Write(b) => b.sample_count(),
                _ => 0,
            })
            .sum()
    }
}

impl Storage {
    /// Sends a group request to the writer and waits for its answer, off the async runtime.
    async fn group_call<T: Send + 'static>(
        &self,
        request: impl FnOnce(mpsc::Sender<Result<T, Arc<StorageError>>>) -> GroupRequest,
    ) -> Result<T, StorageError> {
        let Some(queue) = self.shared.queue.clone() else {
            return Err(StorageError::WriterStopped);
        };
        let (tx, rx) = mpsc::channel();
        let request = Request::Group(request(tx));
        tokio::task::spawn_blocking(move || {
            queue
                .send(request)
                .map_err(|_| StorageError::WriterStopped)?;
            rx.recv()
                .map_err(|_| StorageError::WriterStopped)?
                .map_err(|e| {
                    Arc::try_unwrap(e)
                        .unwrap_or_else(|shared| StorageError::Unavailable(shared.to_string()))
                })
        })
        .await
        .map_err(|_| StorageError::WriterStopped)?
    }

    /// Admits a write for shard group `group` (at its leader, before proposing it).
    pub(crate) async fn group_admit(
        &self,
        group: u64,
        batch: Batch,
    ) -> Result<Admitted, StorageError> {
        self.group_call(|reply| GroupRequest::Admit {
            group,
            batch,
            reply,
        })
        .await
    }

    /// Applies committed entries of shard group `group` in order (`None` for an entry that
    /// changes no data); `applied` is the group's position after the last. Answers what each
    /// stored (samples) or removed (a retention record).
    pub(crate) async fn group_apply(
        &self,
        group: u64,
        entries: Vec<Option<Record>>,
        applied: Vec<u8>,
    ) -> Result<Vec<u64>, StorageError> {
        self.group_call(|reply| GroupRequest::Apply {
            group,
            entries,
            applied,
            reply,
        })
        .await
    }

    /// The applied position of `group` as the last head flush recorded it: where applying
    /// its log resumes after a restart.
    pub(crate) fn group_applied(&self, group: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .ks
            .meta
            .get(keys::group_applied_key(group))?
            .map(|v| v.to_vec()))
    }

    /// A snapshot of `group`, whose data is the series of `shards`.
    pub(crate) async fn group_snapshot(
        &self,
        group: u64,
        shards: RangeInclusive<u16>,
    ) -> Result<GroupSnapshot, StorageError> {
        let state = self
            .group_call(|reply| GroupRequest::Flush { group, reply })
            .await?;
        let storage = self.clone();
        let records = tokio::task::spawn_blocking(move || storage.shard_records(&shards))
            .await
            .map_err(|_| StorageError::WriterStopped)??;
        Ok(GroupSnapshot { state, records })
    }

    /// Replaces the data of `shards` and the state of `group` by `snapshot`'s.
    pub(crate) async fn group_install(
        &self,
        group: u64,
        shards: RangeInclusive<u16>,
        snapshot: GroupSnapshot,
    ) -> Result<(), StorageError> {
        self.group_call(|reply| GroupRequest::Install {
            group,
            shards,
            state: snapshot.state,
            records: snapshot.records,
            reply,
        })
        .await
    }

    /// The retention drops due now (by storage's clock and retention) for the series of
    /// `shards`: one per partition wholly past its tenant's retention that holds any of
    /// them. A group's leader proposes them, so that every replica drops the same data at the
    /// same point of the log.
    pub(crate) fn group_retention_drops(
        &self,
        shards: &RangeInclusive<u16>,
    ) -> Result<Vec<Record>, StorageError> {
        let now_ms = self.ks.clock.now_ms();
        let from = ShardId(*shards.start()).series_range().0.0.to_be_bytes();
        let to = ShardId(*shards.end()).series_range().1.0.to_be_bytes();
        let mut drops = Vec::new();
        for (tenant, index) in self.ks.chunks.all() {
            let Some(cutoff) = self.ks.retention.cutoff(&tenant, now_ms) else {
                continue;
            };
            if super::partitions::end_of(index) >= cutoff {
                continue;
            }
            let Some(partition) = self.ks.chunks.get(&tenant, index) else {
                continue;
            };
            let mut upper = [0xFFu8; 24];
            upper[..8].copy_from_slice(&to);
            let mut lower = [0u8; 24];
            lower[..8].copy_from_slice(&from);
            if partition.range(lower..=upper).next().is_none() {
                continue;
            }
            drops.push(Record::DropShards {
                tenant,
                index,
                first_shard: *shards.start(),
                last_shard: *shards.end(),
            });
        }
        Ok(drops)
    }

    /// Series of `shards` that hold no sample any more (their data went with retention
    /// drops): the group's leader proposes their removal from the index.
    pub(crate) fn group_empty_series(
        &self,
        shards: &RangeInclusive<u16>,
    ) -> Result<Vec<Record>, StorageError> {
        let from = ShardId(*shards.start()).series_range().0.0;
        let to = ShardId(*shards.end()).series_range().1.0;
        let mut empty: std::collections::BTreeMap<Tenant, Vec<SeriesId>> = Default::default();
        for kv in self.ks.series.range(from.to_be_bytes()..=to.to_be_bytes()) {
            let (key, value) = kv.into_inner()?;
            let Ok(raw) = <[u8; 8]>::try_from(key.as_ref()) else {
                continue;
            };
            let id = SeriesId(u64::from_be_bytes(raw));
            let value = self.ks.vault.open_index(&key, &value)?;
            let Ok((tenant, _)) = postcard::from_bytes::<(Tenant, Labels)>(&value) else {
                continue;
            };
            if self.ks.head.contains(id) {
                continue;
            }
            let mut has_chunks = false;
            for (t, index) in self
                .ks
                .chunks
                .all()
                .into_iter()
                .filter(|(t, _)| t == &tenant)
            {
                if let Some(partition) = self.ks.chunks.get(&t, index)
                    && partition.prefix(raw).next().is_some()
                {
                    has_chunks = true;
                    break;
                }
            }
            if !has_chunks {
                empty.entry(tenant).or_default().push(id);
            }
        }
        Ok(empty
            .into_iter()
            .flat_map(|(tenant, ids)| {
                ids.chunks(4_096)
                    .map(|ids| Record::ForgetSeries {
                        tenant: tenant.clone(),
                        ids: ids.to_vec(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// Every series of `shards` with all its samples, as sample-batch records (one tenant
    /// each, at most [`SNAPSHOT_RECORD_SAMPLES`] samples unless one series holds more).
    fn shard_records(&self, shards: &RangeInclusive<u16>) -> Result<Vec<Record>, StorageError> {
        let from = ShardId(*shards.start()).series_range().0.0;
        let to = ShardId(*shards.end()).series_range().1.0;
        let mut records = Vec::new();
        let mut batch = SampleBatch::default();
        let mut held = 0usize;
        for kv in self.ks.series.range(from.to_be_bytes()..=to.to_be_bytes()) {
            let (key, value) = kv.into_inner()?;
            let (id, tenant, labels) = self.ks.series_entry(&key, &value)?;
            let samples = self
                .samples_of(&tenant, id, i64::MIN, i64::MAX)
                .map_err(|e| StorageError::Corrupt {
                    keyspace: "chunks",
                    detail: e.to_string(),
                })?;
            if batch.tenant != tenant
                || (held > 0 && held + samples.len() > SNAPSHOT_RECORD_SAMPLES)
            {
                if !batch.series.is_empty() {
                    records.push(Record::Write(Batch::Samples(std::mem::take(&mut batch))));
                }
                batch.tenant = tenant;
                held = 0;
            }
            held += samples.len();
            batch.series.push((labels, samples));
        }
        if !batch.series.is_empty() {
            records.push(Record::Write(Batch::Samples(batch)));
        }
        Ok(records)
    }
}

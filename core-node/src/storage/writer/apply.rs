//! Applying a WAL record: the deterministic half of the writer.
//!
//! Everything here depends only on the record and the state it is applied to (the series
//! index, agent offsets, dirty marks, the head): no clock, no node setting, no node-wide
//! counter. Admission ([`super::admit`]) took those decisions before the record was logged.
//! So the live path, a replay after a crash and (with the cluster) another replica applying
//! the same log all end in the same series and samples.
//!
//! What can still differ between two stores that applied the same records is physical, not
//! logical: where the head was cut into chunks (head size and age are local), the chunk write
//! sequences that follow from that, compaction's merges (local and derived), and the nonces of
//! encrypted values. [`crate::storage::Storage::shard_checksums`] compares the logical content.

use super::super::last_value::Appended;
use super::super::record::{Batch, Record};
use super::super::vault::DictionaryId;
use super::super::{SampleBatch, StorageError, keys, partitions};
use super::{Dirty, Replace, Writer, corrupt};
use fjall::{Keyspace, OwnedWriteBatch};
use foldhash::{HashMap, HashSet};
use protocols::wire::{AckOutcome, WriteBatch};
use protocols::{Labels, Sample, SeriesId, Tenant, codec};

/// What a group commit changes, kept aside until the commit succeeds.
#[derive(Default)]
pub(super) struct Pending {
    pub series: HashSet<SeriesId>,
    /// Series removed from the index in this group, with their tenant.
    pub forgotten: Vec<(Tenant, SeriesId)>,
    /// New series per tenant in this group.
    pub tenant_series: HashMap<Tenant, u64>,
    /// Offsets this group applied, all of scope `scope`.
    pub offsets: HashMap<String, (u64, u64)>,
    /// Whose offsets these are: the node's log ([`super::NODE_SCOPE`]) or a shard group.
    pub scope: u64,
    pub dirty: HashMap<(SeriesId, i64), Option<Dirty>>,
    pub next_seq: u64,
    /// Samples for the head, per write batch: its tenant and each series' samples.
    pub head: Vec<(Tenant, Vec<SeriesSamples>)>,
    /// Encrypted dictionary entries this group writes.
    pub dictionary: HashSet<DictionaryId>,
}

/// One series' decoded samples from a write batch, with the hash of its metric name (what
/// the range-result cache invalidates by).
pub(super) type SeriesSamples = super::super::last_value::NamedSamples;

/// What handling one batch stored and refused (admission's refusals included).
pub(super) struct Applied {
    /// The agent the batch came from (empty for HTTP ingest), for the refusal log.
    agent: String,
    pub stored: u64,
    pub rejected: u32,
    pub rejection: Option<String>,
}

impl Applied {
    pub fn new(agent: &str) -> Self {
        Self {
            agent: agent.to_owned(),
            stored: 0,
            rejected: 0,
            rejection: None,
        }
    }

    pub fn reject(&mut self, reason: &'static str, message: String, labels: &Labels) {
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
        tracing::warn!(agent = self.agent.as_str(), reason, %text, "series refused");
        self.rejection.get_or_insert(text);
    }

    pub fn outcome(self) -> AckOutcome {
        AckOutcome::Stored {
            samples: self.stored,
            rejected_series: self.rejected,
            rejection: self.rejection,
        }
    }
}

/// What applying a retention record did: partitions dropped or series forgotten.
pub(super) type RetentionOutcome = Result<usize, StorageError>;

impl Writer {
    /// Applies one record (a replay, or a replica): a write answers with its outcome, a
    /// retention record with how much it removed.
    pub(super) fn apply_record(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        record: &mut Record,
    ) -> Result<AckOutcome, RetentionOutcome> {
        match record {
            Record::Write(batch) => Ok(self.apply_batch(wb, p, batch, Applied::new(""), None)),
            other => Err(self.apply_retention(wb, p, other)),
        }
    }

    /// Applies an admitted write; `applied` holds admission's refusals, `ids` the ids
    /// admission computed for the batch's series (`None`: computed here, as at a replay).
    pub(super) fn apply_batch(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        batch: &mut Batch,
        mut applied: Applied,
        ids: Option<&[SeriesId]>,
    ) -> AckOutcome {
        match batch {
            Batch::Chunks(b) => {
                let ids = ids.filter(|ids| ids.len() == b.series.len());
                self.apply_write(wb, p, b, applied, ids)
            }
            Batch::Samples(b) => {
                let ids = ids.filter(|ids| ids.len() == b.series.len());
                self.apply_samples(wb, p, b, &mut applied, ids);
                applied.outcome()
            }
        }
    }

    /// Applies a retention decision.
    fn apply_retention(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        record: &Record,
    ) -> RetentionOutcome {
        match record {
            Record::DropPartition { tenant, index } => self.apply_drop(tenant, *index),
            Record::DropShards {
                tenant,
                index,
                first_shard,
                last_shard,
            } => self.apply_drop_shards(wb, p, tenant, *index, *first_shard..=*last_shard),
            Record::ForgetSeries { tenant, ids } => self.apply_forget(wb, p, tenant, ids),
            Record::Write(_) => Ok(0),
        }
    }

    /// Drops one partition (its own atomic step in fjall, not part of the group's batch) and
    /// the head's samples of the same tenant and time range: which of them a head flush had
    /// already moved to fjall is local, what goes is not. Answers whether the partition
    /// existed here (local too: a number for the log, not part of the data).
    fn apply_drop(&self, tenant: &Tenant, index: i64) -> RetentionOutcome {
        let existed = self.ks.chunks.get(tenant, index).is_some();
        self.ks.chunks.drop_partition(tenant, index)?;
        let (start, end) = (partitions::start_of(index), partitions::end_of(index));
        self.ks.head.remove_range(tenant, start, end);
        self.ks.last_values.removed_range(start, end);
        self.ks.range_cache.removed(tenant, start, end);
        if existed {
            metrics::counter!("updraft_core_partitions_dropped_total").increment(1);
            tracing::info!(%tenant, partition = index, "dropped a partition past retention");
        }
        Ok(usize::from(existed))
    }

    /// Drops what partition `index` of `tenant` holds of the series of `shards`: their chunks
    /// (in the group's batch), their head samples in the partition's time range and their
    /// dirty marks there. Answers whether anything went. The partition's keyspace stays (other
    /// groups on this node may hold series in it).
    fn apply_drop_shards(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        tenant: &Tenant,
        index: i64,
        shards: std::ops::RangeInclusive<u16>,
    ) -> RetentionOutcome {
        let (start, end) = (partitions::start_of(index), partitions::end_of(index));
        let in_range = |id: SeriesId| shards.contains(&id.shard().0);
        let head = self
            .ks
            .head
            .remove_range_where(tenant, start, end, in_range);
        self.ks.last_values.removed_range(start, end);
        let Some(partition) = self.ks.chunks.get(tenant, index) else {
            return Ok(usize::from(head > 0));
        };
        let first = protocols::model::ShardId(*shards.start()).series_range().0;
        let last = protocols::model::ShardId(*shards.end()).series_range().1;
        let mut from = [0u8; 24];
        from[..8].copy_from_slice(&first.0.to_be_bytes());
        let mut to = [0xFFu8; 24];
        to[..8].copy_from_slice(&last.0.to_be_bytes());
        let mut chunks = 0usize;
        for kv in partition.range(from..=to) {
            wb.remove(&partition, kv.key()?);
            chunks += 1;
        }
        for &(series, day) in self.dirty.keys() {
            if in_range(series) && (start..=end).contains(&day) {
                p.dirty.insert((series, day), None);
            }
        }
        if chunks > 0 {
            metrics::counter!("updraft_core_partitions_dropped_total").increment(1);
            tracing::info!(%tenant, partition = index, chunks, "dropped a shard range of a partition past retention");
        }
        Ok(usize::from(chunks > 0 || head > 0))
    }

    /// Removes from the index every series of `ids` that holds no sample (no chunk in any
    /// partition of `tenant`, nothing in the head): its `series` entry, its postings and its
    /// dirty marks. Committed in a group of its own, so fjall's committed state is the whole
    /// truth about the series' chunks.
    fn apply_forget(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        tenant: &Tenant,
        ids: &[SeriesId],
    ) -> RetentionOutcome {
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
            self.unindex(wb, tenant, id, &labels);
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

    /// Removes series `id`'s entry and postings (its dictionary entries stay, see
    /// [`super::super::vault`]).
    pub(super) fn unindex(
        &self,
        wb: &mut OwnedWriteBatch,
        tenant: &Tenant,
        id: SeriesId,
        labels: &Labels,
    ) {
        wb.remove(&self.ks.series, keys::series_key(id));
        for l in labels.iter() {
            let k = self
                .ks
                .vault
                .posting_key(tenant.as_str(), &l.name, &l.value, id);
            wb.remove(&self.ks.postings, k);
        }
    }

    pub(super) fn dirty_of(&self, p: &Pending, key: (SeriesId, i64)) -> Option<Dirty> {
        match p.dirty.get(&key) {
            Some(d) => *d,
            None => self.dirty.get(&key).copied(),
        }
    }

    /// The last applied `(epoch, sequence)` of `agent`, this group's included.
    pub(super) fn last_offset(&self, p: &Pending, agent: &str) -> Option<(u64, u64)> {
        p.offsets
            .get(agent)
            .copied()
            .or_else(|| self.committed_offset(p.scope, agent))
    }

    /// The last committed `(epoch, sequence)` of `agent` in `scope`.
    pub(super) fn committed_offset(&self, scope: u64, agent: &str) -> Option<(u64, u64)> {
        self.offsets.get(&scope)?.get(agent).copied()
    }

    fn apply_write(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        b: &WriteBatch,
        mut applied: Applied,
        ids: Option<&[SeriesId]>,
    ) -> AckOutcome {
        let agent = b.agent_id.0.as_str();
        // An untracked batch (no agent) is applied every time and records no offset: its
        // sender retries whole requests, and a resent sample only rewrites itself.
        let tracked = !b.agent_id.is_untracked();
        if tracked
            && matches!(self.last_offset(p, agent), Some((epoch, seq)) if epoch == b.epoch && b.sequence <= seq)
        {
            return AckOutcome::Duplicate;
        }
        let mut head = Vec::with_capacity(b.series.len());
        for (i, s) in b.series.iter().enumerate() {
            // Decoding verifies the checksum and the order of timestamps: the same verdict
            // wherever the record is applied.
            match codec::decode(&s.chunk) {
                Ok(samples) => {
                    let id = ids.map_or_else(|| SeriesId::of(&b.tenant, &s.labels), |ids| ids[i]);
                    head.extend(self.apply_series(
                        wb,
                        p,
                        &b.tenant,
                        id,
                        &s.labels,
                        samples,
                        &mut applied,
                    ))
                }
                Err(e) => applied.reject("bad_chunk", format!("damaged chunk: {e}"), &s.labels),
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
        applied: &mut Applied,
        ids: Option<&[SeriesId]>,
    ) {
        let mut head = Vec::with_capacity(b.series.len());
        for (i, (labels, samples)) in b.series.iter_mut().enumerate() {
            let samples = std::mem::take(samples);
            let id = ids.map_or_else(|| SeriesId::of(&b.tenant, labels), |ids| ids[i]);
            head.extend(self.apply_series(wb, p, &b.tenant, id, labels, samples, applied));
        }
        if !head.is_empty() {
            p.head.push((b.tenant.clone(), head));
        }
    }

    /// Stages one series (`id` of `tenant` and `labels`) if it is new and returns its
    /// samples for the head.
    #[allow(clippy::too_many_arguments)]
    fn apply_series(
        &self,
        wb: &mut OwnedWriteBatch,
        p: &mut Pending,
        tenant: &Tenant,
        id: SeriesId,
        labels: &Labels,
        samples: Vec<Sample>,
        applied: &mut Applied,
    ) -> Option<SeriesSamples> {
        if !self.known.contains(&id) && !p.series.contains(&id) {
            if let Err(e) = self.stage_series(wb, p, tenant, id, labels) {
                applied.reject("storage", format!("sealing the series entry: {e}"), labels);
                return None;
            }
            p.series.insert(id);
            *p.tenant_series.entry(tenant.clone()).or_default() += 1;
        }
        applied.stored += samples.len() as u64;
        Some((id, crate::cache::name_hash(labels.metric_name()), samples))
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

    pub(super) fn apply_replace(&self, wb: &mut OwnedWriteBatch, p: &mut Pending, r: &Replace) {
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

    /// Adds the group's dirty marks to its batch: one write per (series, day) and group,
    /// however many chunks of it the group holds.
    pub(super) fn stage_dirty(&self, wb: &mut OwnedWriteBatch, p: &Pending) {
        for (&(series, day), mark) in &p.dirty {
            let key = keys::dirty_key(series, day);
            match mark {
                Some(d) => wb.insert(&self.ks.dirty, key, d.encode()),
                None => wb.remove(&self.ks.dirty, key),
            }
        }
    }

    /// Takes a committed group's changes into the writer's state.
    pub(super) fn absorb(&mut self, p: Pending) {
        let appended = Appended::of(&p.head, &p.series);
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
            for (id, _, samples) in series {
                self.ks.head.append(id, &tenant, samples);
            }
        }
        // After the head holds them: a cache filled from a read from now on sees them.
        appended.report(&self.ks.last_values, &self.ks.range_cache);
        self.ks
            .last_values
            .forget(p.forgotten.iter().map(|(_, id)| *id));
        if !p.offsets.is_empty() {
            self.unflushed_agents
                .extend(p.offsets.keys().map(|a| (p.scope, a.clone())));
            if p.scope == super::NODE_SCOPE {
                self.ks.head.set_agent_offsets(p.offsets.clone());
            }
        }
        let counts_changed = !p.tenant_series.is_empty() || !p.forgotten.is_empty();
        for (tenant, n) in p.tenant_series {
            *self.tenant_series.entry(tenant).or_default() += n;
        }
        if counts_changed {
            self.ks.publish_tenant_series(&self.tenant_series);
        }
        self.offsets.entry(p.scope).or_default().extend(p.offsets);
        for (key, mark) in p.dirty {
            match mark {
                Some(d) => self.dirty.insert(key, d),
                None => self.dirty.remove(&key),
            };
        }
        self.next_seq = p.next_seq;
        if self.dictionary.len() + p.dictionary.len() > super::DICTIONARY_MEMORY {
            self.dictionary.clear();
        }
        self.dictionary.extend(p.dictionary);
        metrics::gauge!("updraft_core_series").set(self.known.len() as f64);
    }
}

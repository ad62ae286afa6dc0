//! Head flushes, checkpoints and the WAL replay on start (see the module docs of [`super`]).

use super::super::record::Record;
use super::super::{StorageError, keys, partitions};
use super::apply::Pending;
use super::{
    Dirty, MAX_CHUNK_SAMPLES, NEXT_SEQ_KEY, NODE_SCOPE, WAL_APPLIED_KEY, WAL_ROLL_BYTES, Writer,
    corrupt, wal_position,
};
use fjall::PersistMode;
use protocols::{Sample, codec};
use seglog::Offset;
use std::time::Instant;

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

impl Writer {
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
    pub(super) fn replay(&mut self) -> Result<(), StorageError> {
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
                match Record::decode(&record.payload) {
                    Ok(
                        mut r @ (Record::DropPartition { .. }
                        | Record::DropShards { .. }
                        | Record::ForgetSeries { .. }),
                    ) => {
                        // A retention record was committed in a group of its own: so it is
                        // replayed, after everything before it is absorbed.
                        if let Some(end) = last_end.take() {
                            self.commit_replayed(
                                std::mem::replace(&mut wb, self.ks.db.batch()),
                                std::mem::take(&mut p),
                                end,
                            )?;
                        }
                        p.next_seq = self.next_seq;
                        let _ = self.apply_record(&mut wb, &mut p, &mut r);
                        self.commit_replayed(
                            std::mem::replace(&mut wb, self.ks.db.batch()),
                            std::mem::take(&mut p),
                            record.end,
                        )?;
                        p.next_seq = self.next_seq;
                        batches += 1;
                    }
                    Ok(mut r) => {
                        // Admission happened before the record was logged: what it holds is
                        // applied whatever the limits, retention or clock are now.
                        let _ = self.apply_record(&mut wb, &mut p, &mut r);
                        last_end = Some(record.end);
                        batches += 1;
                    }
                    Err(_) => {
                        // Checksummed bytes we wrote ourselves: a newer or broken build.
                        corrupt += record.end.0 - record.start.0;
                        last_end = Some(record.end);
                        tracing::error!(offset = record.start.0, "undecodable WAL record skipped");
                    }
                }
            }
            if let Some(end) = last_end {
                self.commit_replayed(wb, p, end)?;
            }
            if self.ks.head.len() >= self.head_max_samples {
                self.flush_head()?;
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

    /// Commits replayed records up to `end`: new series entries to fjall, samples to the head,
    /// as `commit_group` does.
    fn commit_replayed(
        &mut self,
        wb: fjall::OwnedWriteBatch,
        p: Pending,
        end: Offset,
    ) -> Result<(), StorageError> {
        self.commit_pending(wb, p)?;
        self.logged_end = end;
        Ok(())
    }

    /// Commits applied records: new series entries (and removals) to fjall, then the rest of
    /// `p` into the writer's state and the head.
    pub(super) fn commit_pending(
        &mut self,
        mut wb: fjall::OwnedWriteBatch,
        p: Pending,
    ) -> Result<(), StorageError> {
        self.stage_dirty(&mut wb, &p);
        wb.commit()?;
        self.absorb(p);
        Ok(())
    }

    /// Makes fjall durable, then lets the WAL drop what fjall now holds: everything up to the
    /// last head flush.
    pub(super) fn checkpoint(&mut self) -> Result<(), StorageError> {
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

    /// Cuts every series of the head into chunks (one per UTC day) and commits them in one
    /// fjall batch with their dirty marks, the agents' offsets, the next write sequence and
    /// the WAL position they cover; then empties the head. Readers see the samples in the
    /// head until the commit and in fjall from it on (see [`super::head`]).
    pub(super) fn flush_head(&mut self) -> Result<(), StorageError> {
        if self.ks.head.len() == 0
            && self.logged_end == self.flushed_end
            && self.unflushed_groups.is_empty()
        {
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
        for (scope, agent) in &self.unflushed_agents {
            if let Some((epoch, seq)) = self.committed_offset(*scope, agent) {
                let mut offset = Vec::with_capacity(16);
                offset.extend_from_slice(&epoch.to_be_bytes());
                offset.extend_from_slice(&seq.to_be_bytes());
                let key = match *scope {
                    NODE_SCOPE => keys::agent_offset_key(agent),
                    group => keys::group_offset_key(group, agent),
                };
                wb.insert(&self.ks.meta, key, offset);
            }
        }
        for group in &self.unflushed_groups {
            if let Some(applied) = self.group_applied.get(group) {
                wb.insert(&self.ks.meta, keys::group_applied_key(*group), applied);
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
        self.unflushed_groups.clear();
        metrics::counter!("updraft_core_head_flushes_total").increment(1);
        metrics::counter!("updraft_core_chunks_written_total").increment(chunks);
        metrics::histogram!("updraft_core_head_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(samples, chunks, elapsed = ?started.elapsed(), "head flushed");
        Ok(())
    }
}

//! Shard groups: applying a group's committed log entries, and the two ends of its snapshots.
//!
//! A cluster's shard group has its own replicated log (the cluster's Raft log store, fsynced
//! before an entry counts for a commit), so its entries are not written to the node's WAL a
//! second time: they are applied as they are, by the same code as a replay
//! ([`Writer::apply_record`]), with the group's agent offsets ([`super::Writer::offsets`]
//! under the group's id) and the group's applied position kept next to the data: the head
//! flush that moves the applied samples into fjall writes the position in the same batch
//! (`group-applied` in `meta`). After a crash the cluster re-applies what follows that
//! position from its log, as the WAL replay does for the node's own log.
//!
//! A snapshot is taken in two steps: [`GroupRequest::Flush`] (here) flushes the head and
//! makes fjall durable, and answers the group's applied position and agent offsets as of that
//! flush; the caller then reads the group's series and samples from storage (see
//! `storage::group`). Writes applied meanwhile may be in what it reads: the snapshot holds at
//! least the state at its position, and whatever it holds of later entries is applied again
//! over it by the receiver in log order, which ends in the same state (a write rewrites its
//! own samples, retention records are idempotent). [`GroupRequest::Install`] replaces the
//! group's shards with a snapshot's content.

use super::super::record::{Batch, Record};
use super::super::{StorageError, keys};
use super::apply::Pending;
use super::{Writer, corrupt};
use foldhash::HashSet;
use protocols::wire::AckOutcome;
use protocols::{Labels, SeriesId, Tenant};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

type Reply<T> = mpsc::Sender<Result<T, Arc<StorageError>>>;

/// A group's applied position and agent offsets, as of one head flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupState {
    /// The cluster's encoding of the last applied log id and membership; `None` before the
    /// group applied anything here.
    pub applied: Option<Vec<u8>>,
    pub offsets: Vec<(String, (u64, u64))>,
}

/// What admission at a group's leader decided about a write.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// What to propose: the batch without the refused series; `None` when there is nothing
    /// to log (a duplicate, or every series refused and no agent offset to record).
    pub batch: Option<Batch>,
    pub duplicate: bool,
    pub refused: u32,
    pub rejection: Option<String>,
}

pub(crate) enum GroupRequest {
    /// Admit a write for `group` (its leader does, before proposing it): limits, retention
    /// and duplicates by the group's agent offsets, as a single node admits before logging.
    Admit {
        group: u64,
        batch: Batch,
        reply: Reply<Admitted>,
    },
    /// Apply committed entries of `group` in order (`None`: an entry with nothing to apply,
    /// such as a membership change); `applied` is the group's position after the last one.
    /// Answers the samples each stored, or what a retention record removed.
    Apply {
        group: u64,
        entries: Vec<Option<Record>>,
        applied: Vec<u8>,
        reply: Reply<Vec<u64>>,
    },
    /// Flush the head and checkpoint, then answer `group`'s state as of that flush.
    Flush {
        group: u64,
        reply: Reply<GroupState>,
    },
    /// Replace everything stored in `shards` by `records` (sample batches), and the group's
    /// state by `state`; durable when answered.
    Install {
        group: u64,
        shards: RangeInclusive<u16>,
        state: GroupState,
        records: Vec<Record>,
        reply: Reply<()>,
    },
}

impl GroupRequest {
    /// Answers the request with `e` without doing it.
    pub(super) fn refuse(self, e: Arc<StorageError>) {
        match self {
            Self::Admit { reply, .. } => drop(reply.send(Err(e))),
            Self::Apply { reply, .. } => drop(reply.send(Err(e))),
            Self::Flush { reply, .. } => drop(reply.send(Err(e))),
            Self::Install { reply, .. } => drop(reply.send(Err(e))),
        }
    }

    pub(super) fn weight(&self) -> usize {
        match self {
            Self::Apply { entries, .. } => entries
                .iter()
                .flatten()
                .map(|r| match r {
                    Record::Write(b) => b.sample_count(),
                    _ => 1,
                })
                .sum(),
            Self::Admit { .. } | Self::Flush { .. } | Self::Install { .. } => 0,
        }
    }
}

impl Writer {
    /// Runs one group request (each commits on its own, outside the write groups).
    pub(super) fn group_request(&mut self, request: GroupRequest) {
        // Committed entries are applied even when the node is read-only: the group already
        // decided them, and a replica that stopped applying would stall it. A failed writer
        // applies nothing more.
        if let Some(reason) = self
            .ks
            .health
            .get()
            .is_failed()
            .then(|| self.ks.health.get().reason().unwrap_or_default().to_owned())
        {
            return request.refuse(Arc::new(StorageError::Unavailable(reason)));
        }
        // A new write is refused while storage is read-only, as on a single node.
        if let GroupRequest::Admit { reply, .. } = &request
            && let Some(reason) = self.ks.health.get().reason()
        {
            let _ = reply.send(Err(Arc::new(StorageError::Unavailable(reason.to_owned()))));
            return;
        }
        let failed = |w: &Self, what: &str, e: &StorageError| {
            w.ks.health.fail(format!("{what} failed: {e}"));
        };
        match request {
            GroupRequest::Admit {
                group,
                mut batch,
                reply,
            } => {
                let verdict = self.admit(
                    group,
                    &mut super::admit::GroupAdmission::default(),
                    &mut batch,
                );
                let admitted = Admitted {
                    batch: (!verdict.duplicate && !verdict.empty).then_some(batch),
                    duplicate: verdict.duplicate,
                    refused: verdict.applied.rejected,
                    rejection: verdict.applied.rejection,
                };
                let _ = reply.send(Ok(admitted));
            }
            GroupRequest::Apply {
                group,
                entries,
                applied,
                reply,
            } => {
                let done = self.apply_group(group, entries, applied);
                if let Err(e) = &done {
                    failed(self, "applying a shard group's entries", e);
                }
                let _ = reply.send(done.map_err(Arc::new));
            }
            GroupRequest::Flush { group, reply } => {
                let done = self
                    .flush_head()
                    .and_then(|()| self.checkpoint())
                    .map(|()| self.group_state(group));
                if let Err(e) = &done {
                    failed(self, "a shard group's snapshot flush", e);
                }
                let _ = reply.send(done.map_err(Arc::new));
            }
            GroupRequest::Install {
                group,
                shards,
                state,
                records,
                reply,
            } => {
                let done = self.install_group(group, &shards, state, records);
                if let Err(e) = &done {
                    failed(self, "installing a shard group's snapshot", e);
                }
                let _ = reply.send(done.map_err(Arc::new));
            }
        }
    }

    fn pending(&self, group: u64) -> Pending {
        Pending {
            scope: group,
            next_seq: self.next_seq,
            ..Pending::default()
        }
    }

    /// Applies committed entries of `group` in order; a retention record commits on its own,
    /// as at a replay.
    fn apply_group(
        &mut self,
        group: u64,
        entries: Vec<Option<Record>>,
        applied: Vec<u8>,
    ) -> Result<Vec<u64>, StorageError> {
        let mut out = Vec::with_capacity(entries.len());
        let mut wb = self.ks.db.batch();
        let mut p = self.pending(group);
        let mut staged = false;
        for record in entries {
            let Some(mut record) = record else {
                out.push(0);
                continue;
            };
            if matches!(record, Record::Write(_)) {
                out.push(match self.apply_record(&mut wb, &mut p, &mut record) {
                    Ok(AckOutcome::Stored { samples, .. }) => samples,
                    _ => 0,
                });
                staged = true;
                continue;
            }
            if staged {
                let (w, q) = (self.ks.db.batch(), self.pending(group));
                self.commit_pending(std::mem::replace(&mut wb, w), std::mem::replace(&mut p, q))?;
                staged = false;
            }
            let removed = match self.apply_record(&mut wb, &mut p, &mut record) {
                Err(Ok(n)) => n as u64,
                Err(Err(e)) => return Err(e),
                Ok(_) => 0,
            };
            let (w, q) = (self.ks.db.batch(), self.pending(group));
            self.commit_pending(std::mem::replace(&mut wb, w), std::mem::replace(&mut p, q))?;
            out.push(removed);
        }
        if staged {
            self.commit_pending(wb, p)?;
        }
        self.group_applied.insert(group, applied);
        self.unflushed_groups.insert(group);
        self.unflushed_since.get_or_insert_with(Instant::now);
        Ok(out)
    }

    /// `group`'s applied position and agent offsets as the writer holds them.
    fn group_state(&self, group: u64) -> GroupState {
        let mut offsets: Vec<(String, (u64, u64))> = self
            .offsets
            .get(&group)
            .map(|m| m.iter().map(|(a, o)| (a.clone(), *o)).collect())
            .unwrap_or_default();
        offsets.sort();
        GroupState {
            applied: self.group_applied.get(&group).cloned(),
            offsets,
        }
    }

    /// Replaces what `shards` hold by a snapshot's records and `group`'s state by `state`,
    /// then flushes and checkpoints, so that the installed snapshot is durable when answered.
    fn install_group(
        &mut self,
        group: u64,
        shards: &RangeInclusive<u16>,
        state: GroupState,
        records: Vec<Record>,
    ) -> Result<(), StorageError> {
        let removed = self.clear_shards(group, shards)?;
        let mut wb = self.ks.db.batch();
        let mut p = self.pending(group);
        let mut samples = 0u64;
        for mut record in records {
            let Record::Write(Batch::Samples(_)) = &record else {
                return Err(corrupt(
                    "snapshot",
                    "a shard snapshot holds only sample batches".into(),
                ));
            };
            if let Ok(AckOutcome::Stored { samples: n, .. }) =
                self.apply_record(&mut wb, &mut p, &mut record)
            {
                samples += n;
            }
        }
        p.offsets = state.offsets.into_iter().collect();
        self.commit_pending(wb, p)?;
        match state.applied {
            Some(applied) => {
                self.group_applied.insert(group, applied);
                self.unflushed_groups.insert(group);
            }
            None => {
                self.group_applied.remove(&group);
                self.ks.meta.remove(keys::group_applied_key(group))?;
            }
        }
        self.flush_head()?;
        self.checkpoint()?;
        tracing::info!(
            group,
            removed_series = removed,
            samples,
            "installed a shard group snapshot"
        );
        Ok(())
    }

    /// Removes every series of `shards` (entries, postings, chunks, dirty marks, head) and
    /// `group`'s agent offsets, in one commit; returns how many series went.
    fn clear_shards(
        &mut self,
        group: u64,
        shards: &RangeInclusive<u16>,
    ) -> Result<usize, StorageError> {
        let ids: Vec<SeriesId> = self
            .known
            .iter()
            .filter(|id| shards.contains(&id.shard().0))
            .copied()
            .collect();
        let mut wb = self.ks.db.batch();
        let mut p = self.pending(group);
        let partitions = self.ks.chunks.all();
        for &id in &ids {
            let key = keys::series_key(id);
            let Some(value) = self.ks.series.get(key)? else {
                continue;
            };
            let value = self.ks.vault.open_index(&key, &value)?;
            let (tenant, labels): (Tenant, Labels) = postcard::from_bytes(&value)
                .map_err(|e| corrupt("series", format!("entry of {id}: {e}")))?;
            self.unindex(&mut wb, &tenant, id, &labels);
            for (t, index) in partitions.iter().filter(|(t, _)| t == &tenant) {
                let Some(partition) = self.ks.chunks.get(t, *index) else {
                    continue;
                };
                for kv in partition.prefix(id.0.to_be_bytes()) {
                    wb.remove(&partition, kv.key()?);
                }
            }
            self.ks.head.remove_series(id);
            p.forgotten.push((tenant, id));
        }
        let gone: HashSet<SeriesId> = ids.iter().copied().collect();
        for &(series, day) in self.dirty.keys() {
            if gone.contains(&series) {
                p.dirty.insert((series, day), None);
            }
        }
        for kv in self.ks.meta.prefix(keys::group_offset_prefix(group)) {
            wb.remove(&self.ks.meta, kv.key()?);
        }
        self.offsets.remove(&group);
        self.unflushed_agents.retain(|(scope, _)| *scope != group);
        let removed = p.forgotten.len();
        self.commit_pending(wb, p)?;
        Ok(removed)
    }
}

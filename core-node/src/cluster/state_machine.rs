//! A shard group's state machine: its committed entries applied into the node's storage.
//!
//! Each entry's payload is one admitted storage record ([`Proposal`]); applying it is
//! `storage::writer::apply`, the code that applies the single node's WAL, so every replica
//! that applied the same log holds the same series and samples. The group's Raft log is its
//! write-ahead log: the entries are not written to the node's WAL again, and the group's
//! applied position (log id and membership) is stored with the data, by the head flush that
//! moves the applied samples to fjall. After a crash, [`ShardMachine::applied_state`] answers
//! that position and openraft applies the entries after it again from the log.
//!
//! A snapshot is the group's shard data (`storage::group`), held in memory once built; the
//! receiver replaces its shards with it. (Streaming it in bounded chunks from disk is part
//! of the elastic-membership work.)

use super::log_store::{GroupId, read_err};
use super::types::{Applied, Entry, GroupConfig, NodeAddr, NodeId};
use crate::storage::Storage;
use crate::storage::group::GroupSnapshot;
use crate::storage::record::Record;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use std::io::Cursor;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What a group has applied: the last log id and the membership in force.
type Position = (Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>);

/// The last snapshot built or installed here, and its bytes.
type Current = Arc<Mutex<Option<(SnapshotMeta<NodeId, NodeAddr>, Arc<Vec<u8>>)>>>;

fn encode_position(position: &Position) -> Vec<u8> {
    // Serialising owned, serde-derived values into a Vec cannot fail.
    postcard::to_allocvec(position).unwrap_or_default()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &e).into()
}

/// The state machine of shard group `group`, whose data is the series of `shards`.
pub struct ShardMachine {
    group: GroupId,
    shards: RangeInclusive<u16>,
    storage: Storage,
    position: Position,
    current: Current,
    built: u64,
}

impl ShardMachine {
    /// The state machine of `group` over `storage`, at the position its last head flush
    /// recorded.
    pub fn open(
        group: GroupId,
        shards: RangeInclusive<u16>,
        storage: Storage,
    ) -> std::result::Result<Self, crate::storage::StorageError> {
        let position = match storage.group_applied(u64::from(group.0))? {
            Some(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| crate::storage::StorageError::Corrupt {
                    keyspace: "meta",
                    detail: format!("applied position of group {}: {e}", group.0),
                })?
            }
            None => Position::default(),
        };
        Ok(Self {
            group,
            shards,
            storage,
            position,
            current: Current::default(),
            built: 0,
        })
    }

    fn scope(&self) -> u64 {
        u64::from(self.group.0)
    }
}

impl RaftStateMachine<GroupConfig> for ShardMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<Position> {
        Ok(self.position.clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            records.push(match entry.payload {
                EntryPayload::Normal(proposal) => match Record::decode(&proposal.0) {
                    Ok(record) => Some(record),
                    Err(e) => {
                        // The same bytes on every replica: each skips it the same way.
                        metrics::counter!("updraft_cluster_undecodable_entries_total").increment(1);
                        tracing::error!(group = self.group.0, log_id = %entry.log_id, error = %e,
                            "undecodable entry skipped");
                        None
                    }
                },
                EntryPayload::Membership(m) => {
                    self.position.1 = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
                EntryPayload::Blank => None,
            });
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        self.position.0 = Some(last);
        let applied = self
            .storage
            .group_apply(self.scope(), records, encode_position(&self.position))
            .await
            .map_err(write_err)?;
        Ok(applied.into_iter().map(Applied).collect())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.built += 1;
        SnapshotBuilder {
            group: self.group,
            shards: self.shards.clone(),
            storage: self.storage.clone(),
            current: Arc::clone(&self.current),
            built: self.built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let bytes = snapshot.into_inner();
        let mut content = GroupSnapshot::decode(&bytes).map_err(read_err)?;
        // The position is the leader's meta (the content holds at least that state).
        let position: Position = (meta.last_log_id, meta.last_membership.clone());
        content.state.applied = Some(encode_position(&position));
        let samples = content.sample_count();
        self.storage
            .group_install(self.scope(), self.shards.clone(), content)
            .await
            .map_err(snapshot_err)?;
        self.position = position;
        metrics::counter!("updraft_cluster_snapshots_installed_total").increment(1);
        tracing::info!(group = self.group.0, snapshot = %meta.snapshot_id, samples,
            bytes = bytes.len(), "snapshot installed");
        *lock(&self.current) = Some((meta.clone(), Arc::new(bytes)));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<GroupConfig>>> {
        Ok(lock(&self.current).clone().map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes.as_ref().clone())),
        }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Builds a snapshot of a group from storage while the state machine goes on applying.
pub struct SnapshotBuilder {
    group: GroupId,
    shards: RangeInclusive<u16>,
    storage: Storage,
    current: Current,
    built: u64,
}

impl RaftSnapshotBuilder<GroupConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<GroupConfig>> {
        let content = self
            .storage
            .group_snapshot(u64::from(self.group.0), self.shards.clone())
            .await
            .map_err(snapshot_err)?;
        let position: Position = match &content.state.applied {
            Some(bytes) => postcard::from_bytes(bytes).map_err(snapshot_err)?,
            None => Position::default(),
        };
        let meta = SnapshotMeta {
            last_log_id: position.0,
            last_membership: position.1,
            snapshot_id: format!(
                "{}-{}-{}",
                self.group.0,
                position.0.map_or(0, |id| id.index),
                self.built
            ),
        };
        let bytes = Arc::new(content.encode());
        metrics::counter!("updraft_cluster_snapshots_built_total").increment(1);
        tracing::info!(group = self.group.0, snapshot = %meta.snapshot_id,
            samples = content.sample_count(), bytes = bytes.len(), "snapshot built");
        *lock(&self.current) = Some((meta.clone(), Arc::clone(&bytes)));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes.as_ref().clone())),
        })
    }
}

#[cfg(test)]
mod tests;

//! The Raft log and vote of every shard group a node hosts, on one fjall database.
//!
//! # Layout (`<data-dir>/raft`, its own fjall database)
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `raft-log` | group id (u32 BE) ++ log index (u64 BE) | postcard `Entry<GroupConfig>` |
//! | `raft-state` | group id (u32 BE) ++ `v` | postcard `Vote` |
//! | `raft-state` | group id (u32 BE) ++ `c` | postcard `Option<LogId>`: the last committed id |
//! | `raft-state` | group id (u32 BE) ++ `p` | postcard `LogId`: the last purged id |
//!
//! One group's log is one contiguous key range, so truncating a conflicting suffix, purging a
//! prefix or dropping a group are range operations. Compatibility: a new layout gets a new
//! keyspace name.
//!
//! # Durability
//!
//! openraft may count a node's vote for an election and its log for a commit as soon as the
//! storage says they are durable. So [`RaftLogStorage::save_vote`] and the callback of
//! [`RaftLogStorage::append`] return only after fjall's journal is fsynced
//! (`PersistMode::SyncAll`): a vote or an entry acknowledged to a peer survives a power loss.
//! (openraft's own rocksdb example answers before its WAL is flushed; that would let a
//! restarted node vote twice in a term or forget an entry a quorum counted.) The fsync runs on
//! the blocking pool, not on the runtime thread. All groups share the database and its
//! journal: one fsync makes every group's writes before it durable.
//!
//! The committed id is written without an fsync: openraft only uses it to re-apply entries
//! sooner after a restart, and an older value is safe.

use super::types::{Entry, GroupConfig, NodeId};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

/// A shard group's id: its index in the group map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

const VOTE: u8 = b'v';
const COMMITTED: u8 = b'c';
const PURGED: u8 = b'p';

/// The Raft logs of the node's groups: open once per node, then [`RaftLogs::group`] for each
/// group's [`GroupLog`].
#[derive(Clone)]
pub struct RaftLogs {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    log: Keyspace,
    state: Keyspace,
}

impl RaftLogs {
    pub fn open(dir: &Path) -> std::result::Result<Self, fjall::Error> {
        let db = Database::builder(dir).open()?;
        let log = db.keyspace("raft-log", KeyspaceCreateOptions::default)?;
        let state = db.keyspace("raft-state", KeyspaceCreateOptions::default)?;
        Ok(Self {
            inner: Arc::new(Inner { db, log, state }),
        })
    }

    /// The log of `group` (empty until something is appended).
    pub fn group(&self, group: GroupId) -> GroupLog {
        GroupLog {
            group,
            inner: Arc::clone(&self.inner),
        }
    }
}

/// One group's Raft log and vote: openraft's [`RaftLogStorage`] and [`RaftLogReader`].
#[derive(Clone)]
pub struct GroupLog {
    group: GroupId,
    inner: Arc<Inner>,
}

impl Debug for GroupLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupLog")
            .field("group", &self.group)
            .finish()
    }
}

fn entry_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&group.0.to_be_bytes());
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

fn state_key(group: GroupId, what: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.0.to_be_bytes());
    k[4] = what;
    k
}

fn index_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(4..12)?.try_into().ok()?))
}

pub(crate) fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl GroupLog {
    /// The group's whole key range in `raft-log`.
    fn range(&self) -> ([u8; 12], [u8; 12]) {
        (entry_key(self.group, 0), entry_key(self.group, u64::MAX))
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, what: u8) -> Result<Option<T>> {
        match self
            .inner
            .state
            .get(state_key(self.group, what))
            .map_err(read_err)?
        {
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(read_err),
            None => Ok(None),
        }
    }

    fn put_state<T: serde::Serialize>(&self, what: u8, value: &T) -> Result<()> {
        let bytes = postcard::to_allocvec(value).map_err(write_err)?;
        self.inner
            .state
            .insert(state_key(self.group, what), bytes)
            .map_err(write_err)
    }

    /// Removes the group's entries with `from <= index < to`.
    fn remove_range(&self, from: u64, to: u64) -> Result<()> {
        let mut batch = self.inner.db.batch();
        for kv in self
            .inner
            .log
            .range(entry_key(self.group, from)..entry_key(self.group, to))
        {
            let key = kv.key().map_err(read_err)?;
            batch.remove(&self.inner.log, key);
        }
        batch.commit().map_err(write_err)
    }

    /// Makes everything written so far durable, on the blocking pool.
    async fn sync(&self) -> std::io::Result<()> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.db.persist(PersistMode::SyncAll))
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)
    }
}

impl RaftLogReader<GroupConfig> for GroupLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let (_, end_key) = self.range();
        let mut out = Vec::new();
        for kv in self.inner.log.range(entry_key(self.group, start)..=end_key) {
            let (key, value) = kv.into_inner().map_err(read_err)?;
            let Some(index) = index_of(&key) else {
                continue;
            };
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = postcard::from_bytes(&value).map_err(read_err)?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<GroupConfig> for GroupLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<GroupConfig>> {
        let (from, to) = self.range();
        let last = match self.inner.log.range(from..=to).next_back() {
            Some(kv) => {
                let (_, value) = kv.into_inner().map_err(read_err)?;
                let entry: Entry = postcard::from_bytes(&value).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => None,
        };
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_state(PURGED)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.put_state(VOTE, vote)?;
        self.sync()
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.get_state(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.put_state(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self
            .get_state::<Option<LogId<NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<GroupConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.inner.db.batch();
        for entry in entries {
            let bytes = postcard::to_allocvec(&entry).map_err(write_err)?;
            batch.insert(
                &self.inner.log,
                entry_key(self.group, entry.log_id.index),
                bytes,
            );
        }
        batch.commit().map_err(write_err)?;
        // Durable before openraft may count these entries for a commit.
        let synced = self.sync().await;
        let failed = synced
            .as_ref()
            .err()
            .map(|e| write_err(std::io::Error::other(e.to_string())));
        callback.log_io_completed(synced);
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // Entries from `log_id.index` on conflict with the leader's log; the next append
        // (synced) writes their replacements.
        self.remove_range(log_id.index, u64::MAX)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // The purged id first: a crash between the two leaves entries below it, which
        // `get_log_state` and readers never serve as missing.
        self.put_state(PURGED, &log_id)?;
        self.remove_range(0, log_id.index.saturating_add(1))
    }
}

#[cfg(test)]
mod tests;

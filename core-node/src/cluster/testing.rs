//! Test helpers shared by the cluster's tests.

use super::log_store::{GroupId, RaftLogs, read_err};
use super::raft_network::{GroupNetworkFactory, GroupRouter, MemoryNetwork};
use super::types::{Applied, Entry, GroupConfig, NodeAddr, NodeId};
use openraft::Raft;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use std::io::Cursor;
use std::sync::Arc;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The smallest state machine the suite needs: it tracks what was applied and the
/// membership, and snapshots exactly that. (The shard state machine is next.)
#[derive(Default)]
pub(crate) struct MemoryMachine {
    pub applied: Option<LogId<NodeId>>,
    /// The payloads applied, in order (what a replica would hold).
    pub data: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    membership: StoredMembership<NodeId, NodeAddr>,
    /// Shared with the builders it hands out: a built snapshot becomes the current one.
    snapshot: Arc<std::sync::Mutex<Option<StoredSnapshot>>>,
    built: u64,
}

type StoredSnapshot = (SnapshotMeta<NodeId, NodeAddr>, Vec<u8>);

type State = (Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>);

impl MemoryMachine {
    fn state_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&(self.applied, self.membership.clone())).unwrap_or_default()
    }
}

impl RaftSnapshotBuilder<GroupConfig> for MemoryMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<GroupConfig>> {
        self.built += 1;
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!("{:?}-{}", self.applied, self.built),
        };
        let data = self.state_bytes();
        *self.snapshot.lock().expect("lock") = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<GroupConfig> for MemoryMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<State> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                }
                EntryPayload::Normal(p) => self.data.lock().expect("lock").push(p.0),
                EntryPayload::Blank => {}
            }
            out.push(Applied::default());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self {
            applied: self.applied,
            data: Arc::clone(&self.data),
            membership: self.membership.clone(),
            snapshot: Arc::clone(&self.snapshot),
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
        let data = snapshot.into_inner();
        let (applied, membership): State = postcard::from_bytes(&data).map_err(read_err)?;
        self.applied = applied;
        self.membership = membership;
        *self.snapshot.lock().expect("lock") = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<GroupConfig>>> {
        let current = self.snapshot.lock().expect("lock").clone();
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// A member of group 1 on the in-process network: its Raft (log store under `dir`, a
/// [`MemoryMachine`]) registered with `net`, and the payloads its machine applies.
pub(crate) struct Member {
    pub raft: Raft<GroupConfig>,
    pub data: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

pub(crate) async fn member(
    id: NodeId,
    net: &Arc<MemoryNetwork>,
    config: openraft::Config,
    dir: &std::path::Path,
) -> Member {
    // A store just closed (a simulated crash) may hold its lock a moment longer.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let logs = loop {
        match RaftLogs::open(dir) {
            Ok(logs) => break logs,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("raft logs: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let machine = MemoryMachine::default();
    let data = Arc::clone(&machine.data);
    let raft = Raft::new(
        id,
        Arc::new(config.validate().expect("config")),
        GroupNetworkFactory::new(GroupId(1), net.link(id)),
        logs.group(GroupId(1)),
        machine,
    )
    .await
    .expect("raft");
    let router = Arc::new(GroupRouter::default());
    router.add(GroupId(1), raft.clone());
    net.register(id, router);
    Member { raft, data }
}

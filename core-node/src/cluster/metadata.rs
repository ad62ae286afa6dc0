//! The metadata group: one more Raft group (id 0) that holds what every node must agree on,
//! the role ZooKeeper played in the original design. Today that is the cluster map: the nodes
//! (ids and addresses), the shard groups (shard ranges and replicas) and the map's version.
//! Every node is a member: the first three voters, the others learners, so each has the map
//! in memory and routes with it without asking anyone (the data path never waits on the
//! metadata group).
//!
//! Its log is tiny (one entry per change of the map) and is never compacted: the state machine
//! keeps the map in memory and a restarted node applies the log again from the start, which
//! openraft does when [`MetaMachine::applied_state`] answers nothing applied.

use super::log_store::{GroupId, read_err};
use super::types::{Applied, Entry, GroupConfig, NodeAddr, NodeId};
use crate::auth::store::TokenRecord;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use protocols::model::SHARD_COUNT;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::RangeInclusive;
use std::sync::Arc;
use tokio::sync::watch;

/// The metadata group's id; shard groups count from 1.
pub const METADATA_GROUP: GroupId = GroupId(0);
/// Voters of the metadata group (the first nodes by id); the other nodes are learners.
pub const METADATA_VOTERS: usize = 3;

/// One shard group: its contiguous shard range and the nodes holding a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub id: u32,
    pub first_shard: u16,
    pub last_shard: u16,
    pub replicas: Vec<NodeId>,
}

impl GroupSpec {
    pub fn shards(&self) -> RangeInclusive<u16> {
        self.first_shard..=self.last_shard
    }

    pub fn group(&self) -> GroupId {
        GroupId(self.id)
    }
}

/// An API token as the metadata group keeps it (the token store's record, in fields postcard
/// encodes as they are: the file's format skips empty fields, which postcard cannot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub id: String,
    pub tenant: String,
    pub role: crate::auth::Role,
    /// Argon2id PHC string of the secret: the secret itself is never stored.
    pub hash: String,
    pub created_ms: i64,
    pub description: String,
    pub expires_ms: Option<i64>,
}

impl From<&TokenRecord> for StoredToken {
    fn from(r: &TokenRecord) -> Self {
        Self {
            id: r.id.as_str().to_owned(),
            tenant: r.tenant.as_str().to_owned(),
            role: r.role,
            hash: r.hash.clone(),
            created_ms: r.created_ms,
            description: r.description.clone(),
            expires_ms: r.expires_ms,
        }
    }
}

impl StoredToken {
    /// The token store's record; `None` for a record this build cannot read.
    pub fn record(&self) -> Option<TokenRecord> {
        Some(TokenRecord {
            id: crate::auth::TokenId::parse(&self.id).ok()?,
            tenant: protocols::Tenant::new(self.tenant.clone()).ok()?,
            role: self.role,
            hash: self.hash.clone(),
            created_ms: self.created_ms,
            description: self.description.clone(),
            expires_ms: self.expires_ms,
        })
    }
}

/// What the metadata group holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// 0 before the cluster is initialised; each change adds one.
    pub version: u64,
    pub replication_factor: usize,
    pub nodes: BTreeMap<NodeId, NodeAddr>,
    /// Sorted by shard range, covering every shard once.
    pub groups: Vec<GroupSpec>,
    /// The cluster's API tokens: every node authenticates with these (its own `tokens.json`
    /// is imported at `init`, from the node init runs on, and not read after).
    pub tokens: Vec<StoredToken>,
}

/// Why a cluster cannot be created as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("a cluster needs at least one node")]
    NoNodes,
    #[error("replication factor {0} is outside 1–5")]
    ReplicationFactor(usize),
    #[error("replication factor {rf} needs at least {rf} nodes, the cluster has {nodes}")]
    TooFewNodes { rf: usize, nodes: usize },
    #[error("groups per node must be 1–64, got {0}")]
    GroupsPerNode(usize),
}

impl ClusterMap {
    /// The first map of a cluster of `nodes`: `groups_per_node` replicas per node on average,
    /// so `nodes × groups_per_node / rf` groups (at least one, at most one per shard), each a
    /// contiguous range of shards, their replicas spread so that every node holds as many as
    /// any other (± 1) and is the first replica (the one that starts the group) of as many.
    pub fn plan(
        nodes: BTreeMap<NodeId, NodeAddr>,
        replication_factor: usize,
        groups_per_node: usize,
    ) -> std::result::Result<Self, PlanError> {
        if nodes.is_empty() {
            return Err(PlanError::NoNodes);
        }
        if !(1..=5).contains(&replication_factor) {
            return Err(PlanError::ReplicationFactor(replication_factor));
        }
        if replication_factor > nodes.len() {
            return Err(PlanError::TooFewNodes {
                rf: replication_factor,
                nodes: nodes.len(),
            });
        }
        if !(1..=64).contains(&groups_per_node) {
            return Err(PlanError::GroupsPerNode(groups_per_node));
        }
        let count =
            (nodes.len() * groups_per_node / replication_factor).clamp(1, SHARD_COUNT as usize);
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        // Each group takes the nodes holding the fewest replicas so far (ties broken by a
        // rotation, so that equal nodes take turns), and its first replica, the one that
        // starts it and so usually leads it, is the chosen node leading the fewest.
        let (mut held, mut led) = (vec![0usize; ids.len()], vec![0usize; ids.len()]);
        let groups = (0..count)
            .map(|i| {
                let first = (i * SHARD_COUNT as usize / count) as u16;
                let last = ((i + 1) * SHARD_COUNT as usize / count - 1) as u16;
                let mut order: Vec<usize> = (0..ids.len()).map(|k| (i + k) % ids.len()).collect();
                order.sort_by_key(|&j| held[j]);
                let mut chosen = order[..replication_factor].to_vec();
                chosen.sort_by_key(|&j| led[j]);
                for &j in &chosen {
                    held[j] += 1;
                }
                led[chosen[0]] += 1;
                GroupSpec {
                    id: i as u32 + 1,
                    first_shard: first,
                    last_shard: last,
                    replicas: chosen.iter().map(|&j| ids[j]).collect(),
                }
            })
            .collect();
        Ok(Self {
            version: 1,
            replication_factor,
            nodes,
            groups,
            tokens: Vec::new(),
        })
    }

    /// The group holding `shard`.
    pub fn group_of(&self, shard: u16) -> Option<&GroupSpec> {
        let i = self.groups.partition_point(|g| g.last_shard < shard);
        self.groups.get(i).filter(|g| g.shards().contains(&shard))
    }

    pub fn group(&self, id: GroupId) -> Option<&GroupSpec> {
        self.groups.iter().find(|g| g.id == id.0)
    }

    /// The metadata group's voters: the first [`METADATA_VOTERS`] nodes by id.
    pub fn metadata_voters(&self) -> Vec<NodeId> {
        self.nodes.keys().take(METADATA_VOTERS).copied().collect()
    }
}

/// A change of the metadata, as a metadata group entry (postcard).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Create the cluster with this map; refused (applies nothing) once one exists.
    Init(ClusterMap),
    /// Add a token (or replace the one with its id).
    PutToken(StoredToken),
    /// Remove a token.
    RevokeToken(String),
}

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Position = (Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>);
type State = (Position, ClusterMap);

/// The metadata group's state machine: the map in memory, published to the node on every
/// change.
pub struct MetaMachine {
    position: Position,
    map: ClusterMap,
    publish: watch::Sender<Arc<ClusterMap>>,
}

impl MetaMachine {
    /// A machine with nothing applied, and the receiver of its map.
    pub fn new() -> (Self, watch::Receiver<Arc<ClusterMap>>) {
        let (publish, map) = watch::channel(Arc::new(ClusterMap::default()));
        (
            Self {
                position: Position::default(),
                map: ClusterMap::default(),
                publish,
            },
            map,
        )
    }

    fn state_bytes(&self) -> Vec<u8> {
        let state: State = (self.position.clone(), self.map.clone());
        // Serialising owned, serde-derived values into a Vec cannot fail.
        postcard::to_allocvec(&state).unwrap_or_default()
    }
}

impl RaftSnapshotBuilder<GroupConfig> for MetaMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<GroupConfig>> {
        let meta = SnapshotMeta {
            last_log_id: self.position.0,
            last_membership: self.position.1.clone(),
            snapshot_id: format!("meta-{}", self.position.0.map_or(0, |id| id.index)),
        };
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(self.state_bytes())),
        })
    }
}

impl RaftStateMachine<GroupConfig> for MetaMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<Position> {
        Ok(self.position.clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.position.0 = Some(entry.log_id);
            let mut changed = 0;
            match entry.payload {
                EntryPayload::Normal(p) => match postcard::from_bytes::<MetaCommand>(&p.0) {
                    Ok(MetaCommand::Init(map)) if self.map.version == 0 => {
                        tracing::info!(
                            nodes = map.nodes.len(),
                            groups = map.groups.len(),
                            replication_factor = map.replication_factor,
                            "cluster map created"
                        );
                        self.map = map;
                        changed = self.map.version;
                    }
                    Ok(MetaCommand::Init(_)) => {}
                    Ok(MetaCommand::PutToken(token)) if self.map.version > 0 => {
                        self.map.tokens.retain(|t| t.id != token.id);
                        self.map.tokens.push(token);
                        self.map.version += 1;
                        changed = self.map.version;
                    }
                    Ok(MetaCommand::RevokeToken(id)) if self.map.version > 0 => {
                        let before = self.map.tokens.len();
                        self.map.tokens.retain(|t| t.id != id);
                        if self.map.tokens.len() < before {
                            self.map.version += 1;
                            changed = self.map.version;
                        }
                    }
                    Ok(MetaCommand::PutToken(_) | MetaCommand::RevokeToken(_)) => {}
                    Err(e) => tracing::error!(error = %e, "undecodable metadata entry skipped"),
                },
                EntryPayload::Membership(m) => {
                    self.position.1 = StoredMembership::new(Some(entry.log_id), m);
                }
                EntryPayload::Blank => {}
            }
            out.push(Applied(changed));
        }
        self.publish.send_replace(Arc::new(self.map.clone()));
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        let (publish, _) = watch::channel(Arc::new(self.map.clone()));
        Self {
            position: self.position.clone(),
            map: self.map.clone(),
            publish,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let (position, map): State = postcard::from_bytes(snapshot.get_ref()).map_err(read_err)?;
        self.position = position;
        self.map = map;
        self.publish.send_replace(Arc::new(self.map.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<GroupConfig>>> {
        Ok(Some(self.build_snapshot().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> BTreeMap<NodeId, NodeAddr> {
        (1..=n).map(|id| (id, NodeAddr::default())).collect()
    }

    #[test]
    fn a_plan_covers_every_shard_once_and_spreads_replicas_evenly() {
        for (n, rf, per_node) in [
            (1, 1, 4),
            (3, 3, 4),
            (3, 1, 4),
            (5, 3, 4),
            (4, 2, 16),
            (7, 5, 64),
        ] {
            let map = ClusterMap::plan(nodes(n), rf, per_node).expect("plan");
            let mut next = 0u32;
            for g in &map.groups {
                assert_eq!(
                    u32::from(g.first_shard),
                    next,
                    "{n} nodes rf {rf}: contiguous"
                );
                assert!(g.last_shard >= g.first_shard);
                next = u32::from(g.last_shard) + 1;
                assert_eq!(g.replicas.len(), rf);
                let distinct: std::collections::BTreeSet<_> = g.replicas.iter().collect();
                assert_eq!(
                    distinct.len(),
                    rf,
                    "a node holds one replica of a group at most"
                );
            }
            assert_eq!(next, SHARD_COUNT, "every shard is in a group");
            let mut held: BTreeMap<NodeId, usize> = BTreeMap::new();
            for g in &map.groups {
                for r in &g.replicas {
                    *held.entry(*r).or_default() += 1;
                }
            }
            let (min, max) = (held.values().min(), held.values().max());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{held:?}");
            let mut led: BTreeMap<NodeId, usize> = map.nodes.keys().map(|id| (*id, 0)).collect();
            for g in &map.groups {
                *led.entry(g.replicas[0]).or_default() += 1;
            }
            let (min, max) = (led.values().min(), led.values().max());
            assert!(
                max.zip(min).is_some_and(|(a, b)| a - b <= 1),
                "leaders {led:?}"
            );
            for shard in [0u16, 1, (SHARD_COUNT - 1) as u16] {
                let g = map.group_of(shard).expect("a group");
                assert!(g.shards().contains(&shard));
            }
        }
        assert_eq!(
            ClusterMap::plan(nodes(3), 3, 4).expect("plan").groups.len(),
            4
        );
    }

    #[test]
    fn impossible_plans_are_refused() {
        assert_eq!(ClusterMap::plan(nodes(0), 1, 4), Err(PlanError::NoNodes));
        assert_eq!(
            ClusterMap::plan(nodes(2), 3, 4),
            Err(PlanError::TooFewNodes { rf: 3, nodes: 2 })
        );
        assert_eq!(
            ClusterMap::plan(nodes(9), 6, 4),
            Err(PlanError::ReplicationFactor(6))
        );
        assert_eq!(
            ClusterMap::plan(nodes(3), 3, 0),
            Err(PlanError::GroupsPerNode(0))
        );
    }
}

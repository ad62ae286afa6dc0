//! The Raft type configuration of a shard group.
//!
//! An entry's application data is a [`Proposal`]: one storage record as the leader admitted
//! it (`storage::record` layout: an agent's batch, an HTTP sample batch, a retention drop or a
//! series removal). Raft neither reads nor changes it; every replica applies the same bytes,
//! which is what makes their shards equal (apply is deterministic, see
//! `storage::writer::apply`).

use serde::{Deserialize, Serialize};
use std::fmt;
// `declare_raft_types!` names `Cursor` for the default snapshot data.
use std::io::Cursor;

/// A node of the cluster, as Raft and the membership name it.
pub type NodeId = u64;

/// Where a node is reached: its inter-node (cluster) address and its HTTP API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub cluster: String,
    pub http: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster {} http {}", self.cluster, self.http)
    }
}

/// One admitted storage record, encoded (opaque to Raft).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(#[serde(with = "protocols::wire::serde_bytes_compat")] pub Vec<u8>);

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal({} bytes)", self.0.len())
    }
}

/// What applying an entry answered: the samples it stored, or what a retention record
/// removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub u64);

openraft::declare_raft_types!(
    /// A shard group's Raft types.
    pub GroupConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = NodeAddr,
);

/// A Raft log entry of a shard group.
pub type Entry = openraft::Entry<GroupConfig>;

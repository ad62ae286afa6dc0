//! The cluster: shard groups replicated with Raft (openraft 0.9), a metadata group, and the
//! transport between nodes. See `docs/cluster.md` for the design, what an acknowledgement
//! guarantees, and what is built so far.
//!
//! A node started with `--node-id` runs [`node::ClusterNode`]; without it the node is a single
//! node and nothing here runs. The pieces:
//!
//! - [`types`]: the Raft type configuration of every group (entries carry admitted storage
//!   records, or metadata commands, opaque to Raft).
//! - [`log_store`]: the Raft log and vote of every group hosted by the node, on one fjall
//!   database, fsynced before openraft is told anything is durable.
//! - [`state_machine`]: a shard group's state machine: entries applied into storage by the
//!   code that applies the single node's WAL; snapshots are the group's shard data.
//! - [`metadata`]: the metadata group's state machine (the cluster map) and the placement of
//!   a new cluster's groups.
//! - [`transport`]: QUIC between nodes with mutual TLS from the cluster CA, one connection
//!   per peer for every group; a peer is who its node certificate says.
//! - [`raft_network`]: openraft's network for groups over a link (that transport, or an
//!   in-process network for tests), the router that serves each group's Raft RPCs, and
//!   forwarded proposals.
//! - [`writes`]: the write path: batches split by group, admitted and proposed at each
//!   group's leader.
//! - [`reads`]: the read path: read barriers, reads served for other nodes, and the query
//!   engine's data source over every group.
//! - [`retention`]: retention decided by each group's leader and logged.
//! - [`tokens`]: API tokens kept by the metadata group.
//! - [`node`]: a clustered node at run time (groups, write routing, admin views); [`cli`]:
//!   `core-node cluster init|status`.

// openraft's `StorageError` is the error its storage traits return (over 200 bytes); helpers
// that feed those traits return it too rather than converting at every call.
pub mod cli;
#[expect(
    clippy::result_large_err,
    reason = "openraft's StorageError, fixed by its traits"
)]
pub mod log_store;
pub mod metadata;
pub mod node;
pub mod raft_network;
pub mod reads;
pub mod retention;
pub mod state_machine;
#[cfg(test)]
mod testing;
pub mod tokens;
pub mod transport;
pub mod types;
pub mod writes;

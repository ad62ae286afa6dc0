//! The cluster: shard groups replicated with Raft (openraft 0.9), a metadata group, and the
//! transport between nodes. See `docs/cluster.md` for the design and for what is built so far.
//!
//! **Not in service yet.** A node runs as a single node (the one-group, one-replica case);
//! nothing here is started by [`crate::run`]. What exists is the part every later step stands
//! on, each piece tested against openraft's own expectations:
//!
//! - [`types`]: the Raft type configuration of a shard group (entries carry admitted storage
//!   records, opaque to Raft).
//! - [`log_store`]: the Raft log and vote of every group hosted by the node, on one fjall
//!   database, fsynced before openraft is told anything is durable; it passes openraft's
//!   storage test suite.
//! - [`transport`]: QUIC between nodes with mutual TLS from the cluster CA, one connection per
//!   peer for every group; a peer is who its node certificate says.
//! - [`raft_network`]: openraft's network for groups over a link (that transport, or an
//!   in-process network for tests), and the router that serves each group's Raft RPCs.
//!
//! Next (issue order): the state machine over [`crate::storage::Storage`] (apply is already
//! deterministic: `Storage::apply_admitted`), shard-data snapshots, the metadata group,
//! routing of writes and queries.

// openraft's `StorageError` is the error its storage traits return (over 200 bytes); helpers
// that feed those traits return it too rather than converting at every call.
#[expect(
    clippy::result_large_err,
    reason = "openraft's StorageError, fixed by its traits"
)]
pub mod log_store;
pub mod raft_network;
pub mod state_machine;
#[cfg(test)]
mod testing;
pub mod transport;
pub mod types;

//! Retention in a cluster: decided by each group's leader and logged, so that every replica
//! drops the same data at the same point of its log (a single node's compactor drops expired
//! partitions itself; a clustered node's does not, see `StorageOptions::local_retention`).
//!
//! Every [`RETENTION_EVERY`], for each group this node leads, the leader proposes a
//! `DropShards` record per partition wholly past its tenant's retention (by its clock and
//! settings) that holds series of the group, then the removal of the group's series left
//! without data. The partition's keyspace stays on each node until empty of every group:
//! other groups may still hold series in it.

use super::node::ClusterNode;
use super::writes::ProposeError;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a leader looks for expired data of its groups.
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

impl ClusterNode {
    pub(crate) async fn retention_loop(node: Weak<Self>) {
        let mut tick = tokio::time::interval(RETENTION_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else {
                return;
            };
            if let Err(e) = node.enforce_retention().await {
                tracing::error!(error = %e, "retention pass of the led groups failed");
            }
        }
    }

    /// Proposes the retention decisions due now in every group this node leads; answers
    /// how many records were committed.
    pub async fn enforce_retention(self: &Arc<Self>) -> Result<usize, String> {
        let map = self.map();
        let mut committed = 0;
        for spec in &map.groups {
            let Some(raft) = self.router().raft(spec.group()) else {
                continue;
            };
            if raft.metrics().borrow().current_leader != Some(self.id()) {
                continue;
            }
            let storage = self.storage().clone();
            let shards = spec.shards();
            let drops = tokio::task::spawn_blocking(move || storage.group_retention_drops(&shards))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if drops.is_empty() {
                continue;
            }
            for record in drops {
                match self.lead_proposal(spec.group(), record.encode()).await {
                    Ok(_) => committed += 1,
                    // Leadership moved: the new leader decides next time.
                    Err(ProposeError::NotLeader(_)) => break,
                    Err(ProposeError::Failed(e)) => return Err(e),
                }
            }
            let storage = self.storage().clone();
            let shards = spec.shards();
            let forgets = tokio::task::spawn_blocking(move || storage.group_empty_series(&shards))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            for record in forgets {
                match self.lead_proposal(spec.group(), record.encode()).await {
                    Ok(_) => committed += 1,
                    Err(ProposeError::NotLeader(_)) => break,
                    Err(ProposeError::Failed(e)) => return Err(e),
                }
            }
        }
        Ok(committed)
    }
}

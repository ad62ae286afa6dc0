//! The write path of a clustered node: any node accepts a write and commits it through the
//! shard groups of its series.
//!
//! A batch (HTTP samples, or an agent's batch) is split by group: a series' group is fixed by
//! its id, an agent's batch keeps its agent id, epoch and sequence in every part. Each part is
//! proposed to its group's leader: on this node when it leads the group, else forwarded over
//! the cluster port to the leader a replica names. The leader **admits** the part first, as a
//! single node admits before logging (label limits, retention, series per tenant as this node
//! counts them, duplicates by the group's agent offsets), and proposes what is left; every
//! replica applies it as it is. The write is acknowledged when every part committed (fsynced
//! on a quorum of the group's voters) and the leader applied it. A part that cannot commit
//! within [`PROPOSE_DEADLINE`] fails the whole write, naming the group's shard range; the
//! client retries, and a part that had committed is applied again harmlessly (samples rewrite
//! themselves, an agent's part is a duplicate by its group's offsets).

use super::log_store::GroupId;
use super::metadata::METADATA_GROUP;
use super::node::{ClusterError, ClusterNode, PROPOSE_DEADLINE};
use super::transport::Envelope;
use super::types::{NodeId, Proposal};
use crate::storage::SampleBatch;
use crate::storage::record::{Batch, Record};
use openraft::error::{ClientWriteError, RaftError};
use protocols::SeriesId;
use protocols::wire::{AckOutcome, ErrorCode, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A proposal forwarded to the node believed to lead the group: the body is the entry's
/// payload, the answer a `Result<ProposeOutcome, ProposeError>`.
pub const PROPOSE: u8 = 4;

/// What a committed proposal did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposeOutcome {
    /// Samples stored (or, for a retention record, what it removed).
    pub stored: u64,
    /// Series admission refused, and why the first was.
    pub refused: u32,
    pub rejection: Option<String>,
    /// An agent's part the group had applied already: nothing was proposed.
    pub duplicate: bool,
}

/// Why a node did not commit a proposal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProposeError {
    /// This node does not lead the group; the leader it knows of, if any.
    NotLeader(Option<NodeId>),
    Failed(String),
}

impl ClusterNode {
    /// Splits `batches` (one tenant) by shard group and commits every part.
    pub async fn write_samples(
        self: &Arc<Self>,
        batches: Vec<SampleBatch>,
    ) -> Result<ProposeOutcome, ClusterError> {
        let map = self.map();
        if map.version == 0 {
            return Err(ClusterError::NotInitialised);
        }
        let mut parts: BTreeMap<u32, SampleBatch> = BTreeMap::new();
        for batch in batches {
            for (labels, samples) in batch.series {
                let shard = SeriesId::of(&batch.tenant, &labels).shard().0;
                let group = map.group_of(shard).ok_or_else(|| {
                    ClusterError::Refused(format!("no group holds shard {shard}"))
                })?;
                let part = parts.entry(group.id).or_insert_with(|| SampleBatch {
                    tenant: batch.tenant.clone(),
                    series: Vec::new(),
                });
                part.series.push((labels, samples));
            }
        }
        self.commit_parts(
            parts
                .into_iter()
                .map(|(g, part)| (GroupId(g), Record::Write(Batch::Samples(part))))
                .collect(),
        )
        .await
    }

    /// Commits an agent's batch through the groups of its series; answers the agent.
    pub async fn write_batch(self: &Arc<Self>, batch: WriteBatch) -> AckOutcome {
        let map = self.map();
        if map.version == 0 {
            return AckOutcome::Failed {
                code: ErrorCode::Unavailable,
                message: ClusterError::NotInitialised.to_string(),
            };
        }
        let mut parts: BTreeMap<u32, WriteBatch> = BTreeMap::new();
        for series in batch.series {
            let shard = SeriesId::of(&batch.tenant, &series.labels).shard().0;
            let Some(group) = map.group_of(shard) else {
                return AckOutcome::Failed {
                    code: ErrorCode::Unavailable,
                    message: format!("no group holds shard {shard}"),
                };
            };
            parts
                .entry(group.id)
                .or_insert_with(|| WriteBatch {
                    agent_id: batch.agent_id.clone(),
                    epoch: batch.epoch,
                    sequence: batch.sequence,
                    tenant: batch.tenant.clone(),
                    series: Vec::new(),
                })
                .series
                .push(series);
        }
        let parts = parts
            .into_iter()
            .map(|(g, part)| (GroupId(g), Record::Write(Batch::Chunks(part))))
            .collect();
        match self.commit_parts(parts).await {
            Ok(o) if o.duplicate && o.stored == 0 && o.refused == 0 => AckOutcome::Duplicate,
            Ok(o) => AckOutcome::Stored {
                samples: o.stored,
                rejected_series: o.refused,
                rejection: o.rejection,
            },
            Err(e) => AckOutcome::Failed {
                code: ErrorCode::Unavailable,
                message: e.to_string(),
            },
        }
    }

    /// Commits every part at once; the first failure fails the whole write.
    async fn commit_parts(
        self: &Arc<Self>,
        parts: Vec<(GroupId, Record)>,
    ) -> Result<ProposeOutcome, ClusterError> {
        let map = self.map();
        let mut tasks = tokio::task::JoinSet::new();
        for (group, record) in parts {
            let node = Arc::clone(self);
            let replicas = map
                .group(group)
                .map(|g| g.replicas.clone())
                .unwrap_or_default();
            let payload = record.encode();
            tasks.spawn(async move { node.propose_to(group, &replicas, payload).await });
        }
        let mut total = ProposeOutcome {
            duplicate: true,
            ..ProposeOutcome::default()
        };
        let mut failed = None;
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(o)) => {
                    total.stored += o.stored;
                    total.refused += o.refused;
                    total.rejection = total.rejection.or(o.rejection);
                    total.duplicate &= o.duplicate;
                }
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(e) => {
                    failed = failed.or(Some(ClusterError::Refused(format!(
                        "a proposal task failed: {e}"
                    ))))
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Commits `payload` in `group`, whose replicas are `replicas`: here when this node
    /// leads it, else at the leader a replica names, trying the replicas in turn while there
    /// is no leader.
    pub(crate) async fn propose_to(
        &self,
        group: GroupId,
        replicas: &[NodeId],
        payload: Vec<u8>,
    ) -> Result<ProposeOutcome, ClusterError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        let local = self.router().raft(group);
        let mut target = match &local {
            Some(raft) => raft.metrics().borrow().current_leader.unwrap_or(self.id()),
            None => replicas.first().copied().unwrap_or(self.id()),
        };
        let mut turn = 0usize;
        loop {
            let answer = if target == self.id() {
                self.lead_proposal(group, payload.clone()).await
            } else {
                self.forward(group, target, &payload).await
            };
            let why = match answer {
                Ok(outcome) => return Ok(outcome),
                Err(ProposeError::NotLeader(Some(leader))) if leader != target => {
                    target = leader;
                    continue;
                }
                Err(ProposeError::NotLeader(_)) => {
                    "no leader (an election is under way)".to_owned()
                }
                Err(ProposeError::Failed(why)) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                let map = self.map();
                let (first, last) = map
                    .group(group)
                    .map_or((0, 0), |g| (g.first_shard, g.last_shard));
                metrics::counter!("updraft_cluster_proposals_failed_total").increment(1);
                return Err(ClusterError::Unavailable {
                    group: group.0,
                    first,
                    last,
                    reason: why,
                });
            }
            // The leader this node's replica knows of by now, else the next replica, after a
            // pause shorter than an election.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let known = local
                .as_ref()
                .and_then(|raft| raft.metrics().borrow().current_leader)
                .filter(|l| *l != target);
            turn += 1;
            target = match known {
                Some(leader) => leader,
                None if !replicas.is_empty() => replicas[turn % replicas.len()],
                None => target,
            };
        }
    }

    /// Admits and proposes `payload` in `group` if this node leads it (see the module docs).
    pub(crate) async fn lead_proposal(
        &self,
        group: GroupId,
        payload: Vec<u8>,
    ) -> Result<ProposeOutcome, ProposeError> {
        let raft = self
            .router()
            .raft(group)
            .ok_or(ProposeError::NotLeader(None))?;
        let leader = raft.metrics().borrow().current_leader;
        if leader != Some(self.id()) {
            return Err(ProposeError::NotLeader(leader));
        }
        let mut outcome = ProposeOutcome::default();
        let payload = match (group, Record::decode(&payload)) {
            (METADATA_GROUP, _) => payload,
            (_, Ok(Record::Write(batch))) => {
                let admitted = self
                    .storage()
                    .group_admit(u64::from(group.0), batch)
                    .await
                    .map_err(|e| ProposeError::Failed(e.to_string()))?;
                outcome.refused = admitted.refused;
                outcome.rejection = admitted.rejection;
                outcome.duplicate = admitted.duplicate;
                match admitted.batch {
                    // Nothing refused: the batch is the one proposed, bytes and all.
                    Some(_) if admitted.refused == 0 => payload,
                    Some(batch) => Record::Write(batch).encode(),
                    None => return Ok(outcome),
                }
            }
            (_, Ok(_)) => payload,
            (_, Err(e)) => return Err(ProposeError::Failed(format!("undecodable proposal: {e}"))),
        };
        match raft.client_write(Proposal(payload)).await {
            Ok(response) => {
                outcome.stored = response.data.0;
                Ok(outcome)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader(f.leader_id))
            }
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    async fn forward(
        &self,
        group: GroupId,
        to: NodeId,
        payload: &[u8],
    ) -> Result<ProposeOutcome, ProposeError> {
        let envelope = Envelope {
            group,
            kind: PROPOSE,
            body: payload.to_vec(),
        };
        let answer = self
            .call(to, envelope)
            .await
            .map_err(ProposeError::Failed)?;
        postcard::from_bytes::<Result<ProposeOutcome, ProposeError>>(&answer)
            .map_err(|e| ProposeError::Failed(format!("node {to} answered garbage: {e}")))?
    }
}

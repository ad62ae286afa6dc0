//! openraft's network for shard groups, over a [`Link`]: the QUIC [`super::transport`] in
//! service, the in-process [`MemoryNetwork`] in tests (which cuts links to partition nodes).
//!
//! Each Raft RPC is one [`Envelope`] carrying the group id, a kind (1 append entries, 2 vote,
//! 3 install snapshot) and the postcard-encoded request; the answer is the postcard-encoded
//! `Result` of the target group's `Raft` call. [`GroupRouter`] is the serving side: it hands
//! each request to the `Raft` of its group on this node.

use super::log_store::GroupId;
use super::transport::{Answer, Envelope, Handler, Peers, TransportError};
use super::types::{GroupConfig, NodeAddr, NodeId};
use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

const APPEND_ENTRIES: u8 = 1;
const VOTE: u8 = 2;
const INSTALL_SNAPSHOT: u8 = 3;
/// An answer from a [`Link`].
pub type LinkAnswer = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// How this node reaches another: sends one request, waits for its answer.
pub trait Link: Send + Sync + 'static {
    fn call(&self, to: NodeId, node: &NodeAddr, request: Envelope) -> LinkAnswer;
}

/// The QUIC link: `node.cluster` is `host:port`; the host is also the name checked against
/// the peer's certificate.
pub struct QuicLink {
    peers: Arc<Peers>,
}

impl QuicLink {
    pub fn new(peers: Arc<Peers>) -> Self {
        Self { peers }
    }
}

impl Link for QuicLink {
    fn call(&self, to: NodeId, node: &NodeAddr, request: Envelope) -> LinkAnswer {
        let peers = Arc::clone(&self.peers);
        let target = node.cluster.clone();
        Box::pin(async move {
            let bad_address = |reason: String| TransportError::Io { node: to, reason };
            let host = target
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                .ok_or_else(|| bad_address(format!("cluster address {target:?} has no port")))?;
            let addr = tokio::net::lookup_host(target.as_str())
                .await
                .map_err(|e| bad_address(format!("resolving {target}: {e}")))?
                .next()
                .ok_or_else(|| bad_address(format!("{target} resolves to nothing")))?;
            peers.call(to, addr, &host, &request).await
        })
    }
}

/// openraft's network factory for one group.
pub struct GroupNetworkFactory {
    group: GroupId,
    link: Arc<dyn Link>,
}

impl GroupNetworkFactory {
    pub fn new(group: GroupId, link: Arc<dyn Link>) -> Self {
        Self { group, link }
    }
}

impl RaftNetworkFactory<GroupConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        GroupNetwork {
            group: self.group,
            target,
            node: node.clone(),
            link: Arc::clone(&self.link),
        }
    }
}

/// openraft's client to one peer, for one group.
pub struct GroupNetwork {
    group: GroupId,
    target: NodeId,
    node: NodeAddr,
    link: Arc<dyn Link>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, E>>;

impl GroupNetwork {
    async fn rpc<Req, Resp, E>(&self, kind: u8, request: &Req) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            postcard::to_allocvec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let envelope = Envelope {
            group: self.group,
            kind,
            body,
        };
        let answer = match self.link.call(self.target, &self.node, envelope).await {
            Ok(answer) => answer,
            // Not reached at all: openraft backs off instead of retrying at once.
            Err(e @ (TransportError::Connect { .. } | TransportError::Identity(..))) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let result: Result<Resp, E> =
            postcard::from_bytes(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<GroupConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<GroupConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.rpc(APPEND_ENTRIES, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<GroupConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.rpc(INSTALL_SNAPSHOT, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.rpc(VOTE, &rpc).await
    }
}

/// The serving side: the `Raft` of each group this node hosts.
#[derive(Default)]
pub struct GroupRouter {
    groups: RwLock<HashMap<GroupId, Raft<GroupConfig>>>,
}

impl GroupRouter {
    pub fn add(&self, group: GroupId, raft: Raft<GroupConfig>) {
        self.groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(group, raft);
    }

    /// The `Raft` of `group` on this node, if it hosts one.
    pub fn raft(&self, group: GroupId) -> Option<Raft<GroupConfig>> {
        self.groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&group)
            .cloned()
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body).map_err(|e| format!("malformed raft request: {e}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| format!("encoding a raft answer: {e}"))
}

impl Handler for GroupRouter {
    fn handle(&self, _from: NodeId, request: Envelope) -> Answer {
        let raft = self.raft(request.group);
        Box::pin(async move {
            let Some(raft) = raft else {
                return Err(format!("group {} is not hosted here", request.group.0));
            };
            match request.kind {
                APPEND_ENTRIES => encode(&raft.append_entries(decode(&request.body)?).await),
                VOTE => encode(&raft.vote(decode(&request.body)?).await),
                INSTALL_SNAPSHOT => encode(&raft.install_snapshot(decode(&request.body)?).await),
                other => Err(format!("unknown raft message kind {other}")),
            }
        })
    }
}

/// What happens to one message on the in-process network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fault {
    /// Lost before it reaches the peer.
    pub drop_request: bool,
    /// Delivered, but the answer is lost.
    pub drop_answer: bool,
    /// Delivered twice (the second answer is discarded).
    pub duplicate: bool,
    /// Held this long before delivery.
    pub delay_ms: u64,
}

/// Decides the fate of each message (`from`, `to`): a seeded random plan in simulations.
pub type FaultPlan = Box<dyn FnMut(NodeId, NodeId) -> Fault + Send>;

/// An in-process network: every node registers its handler; a cut link fails like an
/// unreachable peer, and a [`FaultPlan`] may delay, drop or duplicate any message. For tests
/// that must control every message.
#[derive(Default)]
pub struct MemoryNetwork {
    nodes: Mutex<HashMap<NodeId, Arc<dyn Handler>>>,
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
    faults: Mutex<Option<FaultPlan>>,
}

impl MemoryNetwork {
    pub fn register(&self, node: NodeId, handler: Arc<dyn Handler>) {
        self.lock_nodes().insert(node, handler);
    }

    /// The link `from` sends on.
    pub fn link(self: &Arc<Self>, from: NodeId) -> Arc<dyn Link> {
        Arc::new(MemoryLink {
            from,
            net: Arc::clone(self),
        })
    }

    /// Cuts every link between `node` and the others, both ways.
    pub fn isolate(&self, node: NodeId) {
        let others: Vec<NodeId> = self.lock_nodes().keys().copied().collect();
        let mut cut = self.lock_cut();
        for other in others.into_iter().filter(|o| *o != node) {
            cut.insert((node, other));
            cut.insert((other, node));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock_cut().clear();
    }

    /// Applies `plan` to every message from now on; `None` delivers everything as it is.
    pub fn set_faults(&self, plan: Option<FaultPlan>) {
        *self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = plan;
    }

    fn fault(&self, from: NodeId, to: NodeId) -> Fault {
        let mut plan = self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        plan.as_mut().map_or_else(Fault::default, |f| f(from, to))
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Arc<dyn Handler>>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_cut(&self) -> std::sync::MutexGuard<'_, HashSet<(NodeId, NodeId)>> {
        self.cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct MemoryLink {
    from: NodeId,
    net: Arc<MemoryNetwork>,
}

impl Link for MemoryLink {
    fn call(&self, to: NodeId, _node: &NodeAddr, request: Envelope) -> LinkAnswer {
        let (from, net) = (self.from, Arc::clone(&self.net));
        Box::pin(async move {
            let unreachable = |reason: &str| TransportError::Connect {
                node: to,
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                reason: reason.to_owned(),
            };
            let fault = net.fault(from, to);
            if fault.delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(fault.delay_ms)).await;
            }
            if fault.drop_request || net.lock_cut().contains(&(from, to)) {
                return Err(unreachable("message lost"));
            }
            let handler = net.lock_nodes().get(&to).cloned();
            let Some(handler) = handler else {
                return Err(unreachable("no such node"));
            };
            if fault.duplicate {
                let _ = handler.handle(from, request.clone()).await;
            }
            let answer = handler.handle(from, request).await;
            // A link cut while the request was in flight loses the answer too.
            if fault.drop_answer || net.lock_cut().contains(&(to, from)) {
                return Err(unreachable("answer lost"));
            }
            answer.map_err(|message| TransportError::Remote { node: to, message })
        })
    }
}

#[cfg(test)]
mod simulation_tests;
#[cfg(test)]
mod tests;

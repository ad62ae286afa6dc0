//! A clustered node at run time: the metadata group, the shard groups it hosts, the transport
//! that serves their Raft messages, and the write path that routes a batch to its groups.
//!
//! - **Start.** The node opens its Raft log store (`<data-dir>/raft`), serves the cluster
//!   port (QUIC, mutual TLS with node certificates) and starts its member of the metadata
//!   group. Whenever the cluster map changes it starts the shard groups it holds a replica
//!   of; the first replica of a new group initialises it with every replica as a voter.
//! - **Init.** [`ClusterNode::init`] (the admin API's `POST /api/v1/admin/cluster/init`, the
//!   CLI's `core-node cluster init`) creates the metadata group on the first three nodes, adds
//!   the others as learners, and commits the first map.
//! - **Writes.** [`ClusterNode::write_samples`] splits each batch by shard group (a series'
//!   group is fixed by its id) and proposes each part to its group: on this node when it leads
//!   the group, else forwarded to the leader (the first answer of a replica names it). The
//!   write is acknowledged when every part is committed (fsynced on a quorum) and applied by
//!   the leader. A part that cannot commit within [`PROPOSE_DEADLINE`] fails the request with
//!   the group's shard range; the client retries, and a part that had committed is applied
//!   again harmlessly (samples rewrite themselves, agent batches are deduplicated per group).

use super::log_store::{GroupId, RaftLogs};
use super::metadata::{ClusterMap, METADATA_GROUP, MetaCommand, MetaMachine};
use super::raft_network::{GroupNetworkFactory, GroupRouter, Link, QuicLink};
use super::state_machine::ShardMachine;
use super::transport::{self, Envelope, Peers};
use super::types::{GroupConfig, NodeAddr, NodeId};
use crate::storage::Storage;
use anyhow::Context;
use openraft::{Raft, SnapshotPolicy};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a proposal keeps trying (elections, forwarding) before the write fails.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

/// What a node needs to join the cluster network.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub node_id: NodeId,
    /// The UDP address the cluster port listens on.
    pub listen: SocketAddr,
    /// How other nodes reach this one: its cluster address (`host:port`, the host being a name
    /// in its node certificate) and its HTTP API.
    pub advertise: NodeAddr,
    /// The cluster CA, and this node's certificate (`core-node certs --node-id N`) and key.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub data_dir: PathBuf,
    /// Raft timing: heartbeat, and the election timeout's lower bound (the upper is twice it).
    pub heartbeat: Duration,
    pub election_timeout: Duration,
}

/// Why a clustered write or command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster is not initialised yet (run `core-node cluster init`)")]
    NotInitialised,
    #[error("group {group} (shards {first}–{last}) did not commit within {secs} s: {reason}", secs = PROPOSE_DEADLINE.as_secs())]
    Unavailable {
        group: u32,
        first: u16,
        last: u16,
        reason: String,
    },
    #[error("{0}")]
    Refused(String),
}

/// A node of the cluster.
pub struct ClusterNode {
    id: NodeId,
    storage: Storage,
    logs: RaftLogs,
    router: Arc<GroupRouter>,
    link: Arc<dyn Link>,
    meta: Raft<GroupConfig>,
    map: watch::Receiver<Arc<ClusterMap>>,
    groups: Mutex<HashMap<GroupId, Raft<GroupConfig>>>,
    /// When each group's last read barrier started, for reads that accept bounded staleness.
    barriers: Mutex<HashMap<GroupId, std::time::Instant>>,
    raft_config: Arc<openraft::Config>,
    advertise: NodeAddr,
    /// The node's token store: fed from the metadata group once the cluster exists.
    auth: Arc<crate::auth::Authenticator>,
}

fn raft_config(
    options: &ClusterOptions,
    snapshots: SnapshotPolicy,
) -> anyhow::Result<Arc<openraft::Config>> {
    let election = options.election_timeout.as_millis() as u64;
    let config = openraft::Config {
        cluster_name: "updraft".into(),
        heartbeat_interval: options.heartbeat.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        // A shard snapshot is the group's data: minutes, not openraft's 200 ms default.
        install_snapshot_timeout: 120_000,
        snapshot_policy: snapshots,
        // A follower that lags by up to this many entries catches up from the log, not a
        // snapshot.
        max_in_snapshot_log_to_keep: 10_000,
        ..Default::default()
    };
    Ok(Arc::new(config.validate().context("raft settings")?))
}

impl ClusterNode {
    /// Starts the node's cluster side: the cluster port, the metadata group, and (as the map
    /// says) its shard groups.
    pub async fn start(
        options: ClusterOptions,
        storage: Storage,
        auth: Arc<crate::auth::Authenticator>,
    ) -> anyhow::Result<Arc<Self>> {
        let tls = transport::node_tls(&options.ca, &options.cert, &options.key).context(
            "loading the node certificate (create it with `core-node certs --node-id N`)",
        )?;
        let mut endpoint = quinn::Endpoint::server(tls.server, options.listen)
            .with_context(|| format!("binding the cluster port on udp {}", options.listen))?;
        endpoint.set_default_client_config(tls.client.clone());
        let peers = Arc::new(Peers::new(endpoint.clone(), tls.client));
        let link: Arc<dyn Link> = Arc::new(QuicLink::new(peers));
        let dir = options.data_dir.join("raft");
        let logs = tokio::task::spawn_blocking(move || RaftLogs::open(&dir))
            .await
            .context("raft log task")?
            .context("opening the raft log store")?;
        let router = Arc::new(GroupRouter::default());
        let (machine, map) = MetaMachine::new();
        let meta = Raft::new(
            options.node_id,
            raft_config(&options, SnapshotPolicy::Never)?,
            GroupNetworkFactory::new(METADATA_GROUP, Arc::clone(&link)),
            logs.group(METADATA_GROUP),
            machine,
        )
        .await
        .context("starting the metadata group")?;
        router.add(METADATA_GROUP, meta.clone());
        let node = Arc::new(Self {
            id: options.node_id,
            storage,
            logs,
            router,
            link,
            meta,
            map,
            groups: Mutex::new(HashMap::new()),
            barriers: Mutex::new(HashMap::new()),
            raft_config: raft_config(&options, SnapshotPolicy::LogsSinceLast(50_000))?,
            advertise: options.advertise,
            auth,
        });
        let handler = super::reads::NodeHandler {
            router: Arc::clone(&node.router),
            node: Arc::downgrade(&node),
        };
        tokio::spawn(transport::serve(endpoint, Arc::new(handler)));
        tokio::spawn(Arc::clone(&node).follow_map());
        tokio::spawn(Self::publish_metrics(Arc::downgrade(&node)));
        tokio::spawn(Self::retention_loop(Arc::downgrade(&node)));
        tracing::info!(node = node.id, cluster = %options.listen, "cluster node started");
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn router(&self) -> &GroupRouter {
        &self.router
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// When the last read barrier of `group` that completed had started: this node's replica
    /// holds at least everything committed by then.
    pub(crate) fn last_barrier(&self, group: GroupId) -> Option<std::time::Instant> {
        lock(&self.barriers).get(&group).copied()
    }

    pub(crate) fn note_barrier(&self, group: GroupId, started: std::time::Instant) {
        let mut barriers = lock(&self.barriers);
        let entry = barriers.entry(group).or_insert(started);
        *entry = (*entry).max(started);
    }

    /// Sends `envelope` to node `to` (at its address in the map) and waits for the answer.
    pub(crate) async fn call(&self, to: NodeId, envelope: Envelope) -> Result<Vec<u8>, String> {
        let addr = self
            .map()
            .nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| format!("node {to} is not in the cluster map"))?;
        tokio::time::timeout(PROPOSE_DEADLINE, self.link.call(to, &addr, envelope))
            .await
            .map_err(|_| format!("node {to} did not answer"))?
            .map_err(|e| e.to_string())
    }

    /// Resolves on each change of the map this node applies.
    pub(crate) fn map_receiver(&self) -> watch::Receiver<Arc<ClusterMap>> {
        self.map.clone()
    }

    /// The cluster map as this node last applied it.
    pub fn map(&self) -> Arc<ClusterMap> {
        Arc::clone(&self.map.borrow())
    }

    /// Every second: per group this node holds, whether it leads, its applied index and (as
    /// leader) how many entries its slowest follower lags; the map's version and size.
    async fn publish_metrics(node: std::sync::Weak<Self>) {
        metrics::counter!("updraft_cluster_proposals_failed_total").absolute(0);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else {
                return;
            };
            let map = node.map();
            metrics::gauge!("updraft_cluster_map_version").set(map.version as f64);
            metrics::gauge!("updraft_cluster_nodes").set(map.nodes.len() as f64);
            let mut leading = 0u64;
            for g in &map.groups {
                let Some(raft) = node.router.raft(g.group()) else {
                    continue;
                };
                let m = raft.metrics().borrow().clone();
                let group = g.id.to_string();
                let leads = m.current_leader == Some(node.id);
                leading += u64::from(leads);
                metrics::gauge!("updraft_cluster_group_leader", "group" => group.clone())
                    .set(if leads { 1.0 } else { 0.0 });
                metrics::gauge!("updraft_cluster_group_applied_index", "group" => group.clone())
                    .set(m.last_applied.map_or(0, |l| l.index) as f64);
                if let Some(replication) = &m.replication {
                    let last = m.last_log_index.unwrap_or(0);
                    let lag = replication
                        .values()
                        .map(|matched| last.saturating_sub(matched.map_or(0, |l| l.index)))
                        .max()
                        .unwrap_or(0);
                    metrics::gauge!("updraft_cluster_group_lag_entries", "group" => group)
                        .set(lag as f64);
                }
            }
            metrics::gauge!("updraft_cluster_groups_led").set(leading as f64);
        }
    }

    /// Starts the shard groups of every new map.
    async fn follow_map(self: Arc<Self>) {
        let mut map = self.map.clone();
        loop {
            let current = Arc::clone(&map.borrow_and_update());
            if current.version > 0 {
                let records = current.tokens.iter().filter_map(|t| t.record()).collect();
                self.auth.set_cluster_tokens(records);
            }
            if let Err(e) = self.start_groups(&current).await {
                tracing::error!(error = %e, "starting shard groups failed");
            }
            if map.changed().await.is_err() {
                return;
            }
        }
    }

    async fn start_groups(&self, map: &ClusterMap) -> anyhow::Result<()> {
        for spec in map.groups.iter().filter(|g| g.replicas.contains(&self.id)) {
            if lock(&self.groups).contains_key(&spec.group()) {
                continue;
            }
            let machine = ShardMachine::open(spec.group(), spec.shards(), self.storage.clone())?;
            let raft = Raft::new(
                self.id,
                Arc::clone(&self.raft_config),
                GroupNetworkFactory::new(spec.group(), Arc::clone(&self.link)),
                self.logs.group(spec.group()),
                machine,
            )
            .await
            .with_context(|| format!("starting group {}", spec.id))?;
            self.router.add(spec.group(), raft.clone());
            lock(&self.groups).insert(spec.group(), raft.clone());
            if spec.replicas.first() == Some(&self.id) {
                let members: BTreeMap<NodeId, NodeAddr> = spec
                    .replicas
                    .iter()
                    .filter_map(|r| map.nodes.get(r).map(|a| (*r, a.clone())))
                    .collect();
                // Refused when the group already has a log here (a restart): nothing to do.
                if raft.initialize(members).await.is_ok() {
                    tracing::info!(group = spec.id, "shard group initialised");
                }
            }
            tracing::info!(
                group = spec.id,
                first_shard = spec.first_shard,
                last_shard = spec.last_shard,
                "shard group started"
            );
        }
        Ok(())
    }

    /// Creates the cluster: the metadata group on the first nodes, then the first map.
    pub async fn init(
        &self,
        nodes: BTreeMap<NodeId, NodeAddr>,
        replication_factor: usize,
        groups_per_node: usize,
    ) -> Result<Arc<ClusterMap>, ClusterError> {
        if !nodes.contains_key(&self.id) {
            return Err(ClusterError::Refused(format!(
                "node {} (this one) is not in the node list",
                self.id
            )));
        }
        let mut map = ClusterMap::plan(nodes, replication_factor, groups_per_node)
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        // The tokens of the node init runs on become the cluster's.
        map.tokens = self.auth.records().iter().map(Into::into).collect();
        if self.map().version > 0 {
            return Err(ClusterError::Refused(
                "the cluster is already initialised".into(),
            ));
        }
        let voters: BTreeMap<NodeId, NodeAddr> = map
            .metadata_voters()
            .into_iter()
            .filter_map(|id| map.nodes.get(&id).map(|a| (id, a.clone())))
            .collect();
        if !voters.contains_key(&self.id) {
            return Err(ClusterError::Refused(format!(
                "run init on one of the metadata voters {:?}",
                voters.keys().collect::<Vec<_>>()
            )));
        }
        // A second init (a retried command) finds the group initialised: go on to the map.
        let _ = self.meta.initialize(voters.clone()).await;
        let command = postcard::to_allocvec(&MetaCommand::Init(map.clone()))
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        self.propose_to(
            METADATA_GROUP,
            &voters.keys().copied().collect::<Vec<_>>(),
            command,
        )
        .await?;
        // Learners: the nodes that are not voters still receive the map.
        for (id, addr) in map.nodes.iter().filter(|(id, _)| !voters.contains_key(id)) {
            self.meta
                .add_learner(*id, addr.clone(), false)
                .await
                .map_err(|e| ClusterError::Refused(format!("adding node {id}: {e}")))?;
        }
        Ok(Arc::new(map))
    }

    /// The admin view: nodes, groups, leaders and each local replica's applied index.
    pub fn status(&self) -> serde_json::Value {
        let map = self.map();
        let groups: Vec<serde_json::Value> = map
            .groups
            .iter()
            .map(|g| {
                let local = self.router.raft(g.group()).map(|r| {
                    let m = r.metrics().borrow().clone();
                    serde_json::json!({
                        "state": format!("{:?}", m.state),
                        "term": m.current_term,
                        "leader": m.current_leader,
                        "last_log_index": m.last_log_index,
                        "applied_index": m.last_applied.map(|l| l.index),
                        "snapshot_index": m.snapshot.map(|l| l.index),
                        "replication": m.replication.map(|r| r.iter().map(|(id, l)| (id.to_string(), l.map(|l| l.index))).collect::<BTreeMap<_, _>>()),
                    })
                });
                serde_json::json!({
                    "id": g.id,
                    "first_shard": g.first_shard,
                    "last_shard": g.last_shard,
                    "replicas": g.replicas,
                    "local": local,
                })
            })
            .collect();
        let meta = self.meta.metrics().borrow().clone();
        serde_json::json!({
            "node_id": self.id,
            "advertise": {"cluster": self.advertise.cluster, "http": self.advertise.http},
            "map_version": map.version,
            "replication_factor": map.replication_factor,
            "metadata": {"leader": meta.current_leader, "state": format!("{:?}", meta.state), "applied_index": meta.last_applied.map(|l| l.index)},
            "nodes": map.nodes.iter().map(|(id, a)| serde_json::json!({"id": id, "cluster": a.cluster, "http": a.http})).collect::<Vec<_>>(),
            "groups": groups,
        })
    }

    /// Per group this node holds a replica of: its applied index and a checksum of its
    /// content (series, samples, and a hash over the per-shard checksums of its range), which
    /// every replica at the same applied index must share. Reads every sample.
    pub async fn checksums(&self) -> Result<serde_json::Value, crate::storage::StorageError> {
        let storage = self.storage.clone();
        let shards = tokio::task::spawn_blocking(move || storage.shard_checksums())
            .await
            .map_err(|_| crate::storage::StorageError::WriterStopped)??;
        let map = self.map();
        let mut out = BTreeMap::new();
        for g in &map.groups {
            let Some(raft) = self.router.raft(g.group()) else {
                continue;
            };
            let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
            let mut hash = xxhash_rust::xxh3::Xxh3::new();
            let (mut series, mut samples) = (0u64, 0u64);
            for shard in g.shards() {
                let sum = shards.get(usize::from(shard)).copied().unwrap_or_default();
                series += sum.series;
                samples += sum.samples;
                hash.update(&sum.hash.to_le_bytes());
            }
            out.insert(
                g.id.to_string(),
                serde_json::json!({
                    "applied_index": applied,
                    "series": series,
                    "samples": samples,
                    "hash": format!("{:016x}", hash.digest()),
                }),
            );
        }
        Ok(serde_json::json!({"node_id": self.id, "groups": out}))
    }

    /// Stops every group's Raft (the storage writer flushes nothing more for them).
    pub async fn shutdown(&self) {
        let groups: Vec<Raft<GroupConfig>> = lock(&self.groups).values().cloned().collect();
        for raft in groups {
            let _ = raft.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

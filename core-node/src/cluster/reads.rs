//! The read path of a clustered node: any node answers PromQL over the whole cluster.
//!
//! [`ClusterSource`] is the query engine's data source. For each shard group it reads from
//! this node's replica when it holds one, and otherwise asks a node that does (the group's
//! replicas in order, the next when one does not answer), over the cluster port. Either way,
//! a read starts with a **read barrier** on the node that serves it: it learns the group's
//! commit index from the leader (openraft's `ensure_linearizable`, which also confirms the
//! leader still leads) and waits until its replica has applied that far. So a query sees
//! every write acknowledged before it started (read-your-writes), from any replica. A group
//! whose barrier cannot complete within [`READ_DEADLINE`] (no leader, no replica reachable)
//! fails the query with an error naming its shard range.
//!
//! A query may accept bounded staleness (`max_staleness`, see `docs/query-api.md`): a replica
//! whose last read barrier of the group started at most that long ago answers without a new
//! one, so such reads go on while a group has no leader (a lost quorum, an election).
//!
//! Served remotely: series selection (the matchers travel as name, operator and text),
//! samples of one series, label names and values; each answer is filtered to the asked
//! group's shards, since a node holds several groups.

use super::log_store::GroupId;
use super::metadata::GroupSpec;
use super::node::ClusterNode;
use super::raft_network::GroupRouter;
use super::transport::{Answer, Envelope, Handler};
use super::types::NodeId;
use crate::storage::Storage;
use openraft::error::{CheckIsLeaderError, RaftError};
use protocols::{Labels, Sample, SeriesId, Tenant};
use query::DataSource;
use query::matcher::{MatchOp, Matcher};
use query::source::{DataSourceError, SeriesRef};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The commit index of a group, asked of its leader: `Result<Option<u64>, String>`.
pub const READ_INDEX: u8 = 5;
/// A read served by a replica of the envelope's group: a [`ReadRequest`], answered with a
/// `Result<ReadAnswer, String>`.
pub const READ: u8 = 6;

/// How long a group's read barrier (or a remote read) may take before the query fails.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireMatcher {
    name: String,
    /// 0 `=`, 1 `!=`, 2 `=~`, 3 `!~`.
    op: u8,
    text: String,
}

impl WireMatcher {
    fn of(m: &Matcher) -> Self {
        let op = match m.op {
            MatchOp::Equal(_) => 0,
            MatchOp::NotEqual(_) => 1,
            MatchOp::Regex(_) => 2,
            MatchOp::NotRegex(_) => 3,
        };
        Self {
            name: m.name.clone(),
            op,
            text: m.text().to_owned(),
        }
    }

    fn matcher(&self) -> Result<Matcher, String> {
        Ok(match self.op {
            0 => Matcher::equal(&self.name, &self.text),
            1 => Matcher::not_equal(&self.name, &self.text),
            2 => Matcher::regex(&self.name, &self.text).map_err(|e| e.to_string())?,
            3 => Matcher::not_regex(&self.name, &self.text).map_err(|e| e.to_string())?,
            other => return Err(format!("unknown matcher operator {other}")),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ReadRequest {
    Select {
        tenant: Tenant,
        matchers: Vec<WireMatcher>,
    },
    Samples {
        tenant: Tenant,
        series: u64,
        start_ms: i64,
        end_ms: i64,
    },
    LabelNames {
        tenant: Tenant,
    },
    LabelValues {
        tenant: Tenant,
        name: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ReadAnswer {
    Series(Vec<(u64, Labels)>),
    Samples(Vec<Sample>),
    Strings(Vec<String>),
}

fn unavailable(spec: &GroupSpec, why: impl std::fmt::Display) -> DataSourceError {
    DataSourceError::Unavailable(format!(
        "shard group {} (shards {}–{}): {why}",
        spec.id, spec.first_shard, spec.last_shard
    ))
}

impl ClusterNode {
    /// Waits until this node's replica of `group` has applied everything committed when
    /// the call started (see the module docs).
    pub(crate) async fn read_barrier(&self, group: GroupId) -> Result<(), String> {
        let raft = self
            .router()
            .raft(group)
            .ok_or_else(|| format!("group {} is not hosted on node {}", group.0, self.id()))?;
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + READ_DEADLINE;
        let index = loop {
            let attempt = match raft.ensure_linearizable().await {
                Ok(read) => Ok(read.map(|l| l.index)),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    match f.leader_id {
                        Some(leader) => self.read_index_at(group, leader).await,
                        None => Err("no leader (an election is under way)".to_owned()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            match attempt {
                Ok(index) => break index,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        if let Some(index) = index {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            raft.wait(Some(left.max(Duration::from_millis(100))))
                .applied_index_at_least(Some(index), "read barrier")
                .await
                .map_err(|e| format!("replica behind its leader: {e}"))?;
        }
        self.note_barrier(group, started);
        Ok(())
    }

    /// A read barrier, unless one of `group` completed that started at most `staleness`
    /// ago (`None`: always): a bounded-staleness read then needs no leader.
    async fn barrier_within(
        &self,
        group: GroupId,
        staleness: Option<Duration>,
    ) -> Result<(), String> {
        if let Some(bound) = staleness
            && self
                .last_barrier(group)
                .is_some_and(|at| at.elapsed() <= bound)
        {
            return Ok(());
        }
        self.read_barrier(group).await
    }

    async fn read_index_at(&self, group: GroupId, leader: NodeId) -> Result<Option<u64>, String> {
        let envelope = Envelope {
            group,
            kind: READ_INDEX,
            body: Vec::new(),
        };
        let answer = self.call(leader, envelope).await?;
        postcard::from_bytes::<Result<Option<u64>, String>>(&answer)
            .map_err(|e| format!("node {leader} answered garbage: {e}"))?
    }

    /// Serves a read of `group` from this node's replica, after a read barrier.
    async fn serve_read(
        &self,
        group: GroupId,
        request: ReadRequest,
        staleness: Option<Duration>,
    ) -> Result<ReadAnswer, String> {
        let map = self.map();
        let spec = map
            .group(group)
            .cloned()
            .ok_or_else(|| format!("group {} is not in the cluster map", group.0))?;
        if matches!(
            request,
            ReadRequest::Select { .. }
                | ReadRequest::LabelNames { .. }
                | ReadRequest::LabelValues { .. }
        ) {
            self.barrier_within(group, staleness).await?;
        }
        let storage = self.storage().clone();
        tokio::task::spawn_blocking(move || local_read(&storage, &spec, request))
            .await
            .map_err(|e| format!("read task failed: {e}"))?
            .map_err(|e| e.to_string())
    }
}

fn in_group(spec: &GroupSpec, id: SeriesId) -> bool {
    spec.shards().contains(&id.shard().0)
}

/// A read of this node's storage, limited to `spec`'s shards.
fn local_read(
    storage: &Storage,
    spec: &GroupSpec,
    request: ReadRequest,
) -> Result<ReadAnswer, DataSourceError> {
    Ok(match request {
        ReadRequest::Select { tenant, matchers } => {
            let matchers = matchers
                .iter()
                .map(WireMatcher::matcher)
                .collect::<Result<Vec<_>, _>>()
                .map_err(DataSourceError::Unavailable)?;
            ReadAnswer::Series(
                storage
                    .select_series(&tenant, &matchers)?
                    .into_iter()
                    .filter(|s| in_group(spec, s.id))
                    .map(|s| (s.id.0, s.labels))
                    .collect(),
            )
        }
        ReadRequest::Samples {
            tenant,
            series,
            start_ms,
            end_ms,
        } => {
            ReadAnswer::Samples(storage.samples_of(&tenant, SeriesId(series), start_ms, end_ms)?)
        }
        // A label is listed when some series of the node's has it: across a node's groups,
        // the union is what the caller computes anyway.
        ReadRequest::LabelNames { tenant } => ReadAnswer::Strings(storage.label_names(&tenant)?),
        ReadRequest::LabelValues { tenant, name } => {
            ReadAnswer::Strings(storage.label_values(&tenant, &name)?)
        }
    })
}

/// The cluster port's handler: Raft messages to the groups' router; forwarded proposals,
/// read barriers and reads to the node.
pub struct NodeHandler {
    pub router: Arc<GroupRouter>,
    pub node: std::sync::Weak<ClusterNode>,
}

impl Handler for NodeHandler {
    fn handle(&self, from: NodeId, request: Envelope) -> Answer {
        if ![READ_INDEX, READ, super::writes::PROPOSE].contains(&request.kind) {
            return self.router.handle(from, request);
        }
        let node = self.node.upgrade();
        Box::pin(async move {
            let Some(node) = node else {
                return Err("the node is stopping".to_owned());
            };
            match request.kind {
                super::writes::PROPOSE => {
                    let answer = node.lead_proposal(request.group, request.body).await;
                    Ok(to_bytes(&answer))
                }
                READ_INDEX => {
                    let answer: Result<Option<u64>, String> =
                        match node.router().raft(request.group) {
                            Some(raft) => raft
                                .ensure_linearizable()
                                .await
                                .map(|l| l.map(|l| l.index))
                                .map_err(|e| e.to_string()),
                            None => Err(format!("group {} is not hosted here", request.group.0)),
                        };
                    Ok(to_bytes(&answer))
                }
                _ => {
                    let (staleness_ms, read): (Option<u64>, ReadRequest) =
                        postcard::from_bytes(&request.body)
                            .map_err(|e| format!("malformed read: {e}"))?;
                    let staleness = staleness_ms.map(Duration::from_millis);
                    let answer = node.serve_read(request.group, read, staleness).await;
                    Ok(to_bytes(&answer))
                }
            }
        })
    }
}

/// Postcard bytes of an answer (encoding owned, serde-derived values cannot fail).
fn to_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// The query engine's data source on a clustered node (see the module docs). Its methods are
/// called on tokio's blocking pool; they wait on the node's async calls there.
pub struct ClusterSource {
    node: Arc<ClusterNode>,
    runtime: tokio::runtime::Handle,
    /// `partial_response=true`: a group no replica answers for is left out, and why is kept
    /// here for the answer's warnings (as Thanos and VictoriaMetrics do); `None` fails the
    /// read instead.
    partial: Option<Arc<std::sync::Mutex<Vec<String>>>>,
    /// `max_staleness`: a replica may answer without a read barrier when its last one
    /// started at most this long ago.
    staleness: Option<Duration>,
}

impl ClusterSource {
    pub fn new(node: Arc<ClusterNode>, runtime: tokio::runtime::Handle) -> Self {
        Self {
            node,
            runtime,
            partial: None,
            staleness: None,
        }
    }

    /// The same source, accepting answers at most `bound` stale (see the module docs).
    pub fn with_staleness(mut self, bound: Option<Duration>) -> Self {
        self.staleness = bound;
        self
    }

    /// A source for one request that leaves out the groups it cannot read; the warnings it
    /// collects are read with the returned handle.
    pub fn partial(
        node: Arc<ClusterNode>,
        runtime: tokio::runtime::Handle,
    ) -> (Self, Arc<std::sync::Mutex<Vec<String>>>) {
        let warnings = Arc::default();
        let source = Self {
            node,
            runtime,
            partial: Some(Arc::clone(&warnings)),
            staleness: None,
        };
        (source, warnings)
    }

    /// `e` as a warning when partial answers are allowed (then `Ok`), else the error.
    fn tolerate(&self, e: DataSourceError) -> Result<(), DataSourceError> {
        match &self.partial {
            Some(warnings) => {
                let mut w = warnings
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let text = format!("partial response: {e}");
                if !w.contains(&text) {
                    w.push(text);
                }
                Ok(())
            }
            None => Err(e),
        }
    }

    /// Runs `read` against every group at once (each on its replica here, or remotely) and
    /// gathers the answers; the first group that fails fails the whole read.
    fn per_group<F, Fut>(&self, read: F) -> Result<Vec<ReadAnswer>, DataSourceError>
    where
        F: Fn(Arc<ClusterNode>, GroupSpec) -> Fut,
        Fut: Future<Output = Result<ReadAnswer, DataSourceError>> + Send + 'static,
    {
        let map = self.node.map();
        if map.version == 0 {
            return Err(DataSourceError::Unavailable(
                "the cluster is not initialised yet (run `core-node cluster init`)".into(),
            ));
        }
        let futures: Vec<Fut> = map
            .groups
            .iter()
            .map(|g| read(Arc::clone(&self.node), g.clone()))
            .collect();
        self.runtime.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, f) in futures.into_iter().enumerate() {
                tasks.spawn(async move { (i, f.await) });
            }
            let mut out: Vec<Option<ReadAnswer>> = Vec::new();
            while let Some(done) = tasks.join_next().await {
                let (i, answer) = done
                    .map_err(|e| DataSourceError::Unavailable(format!("read task failed: {e}")))?;
                if out.len() <= i {
                    out.resize_with(i + 1, || None);
                }
                match answer {
                    Ok(a) => out[i] = Some(a),
                    Err(e) => self.tolerate(e)?,
                }
            }
            Ok(out.into_iter().flatten().collect())
        })
    }
}

/// Reads `request` of group `spec`: here when this node holds a replica, else from the first
/// of its replicas that answers.
async fn read_group(
    node: Arc<ClusterNode>,
    spec: GroupSpec,
    request: ReadRequest,
    staleness: Option<Duration>,
) -> Result<ReadAnswer, DataSourceError> {
    if node.router().raft(spec.group()).is_some() {
        return node
            .serve_read(spec.group(), request, staleness)
            .await
            .map_err(|e| unavailable(&spec, e));
    }
    let staleness_ms = staleness.map(|d| d.as_millis() as u64);
    let body =
        postcard::to_allocvec(&(staleness_ms, &request)).map_err(|e| unavailable(&spec, e))?;
    let mut last = String::from("no replica");
    for replica in &spec.replicas {
        let envelope = Envelope {
            group: spec.group(),
            kind: READ,
            body: body.clone(),
        };
        match node.call(*replica, envelope).await {
            Ok(bytes) => match postcard::from_bytes::<Result<ReadAnswer, String>>(&bytes) {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = format!("node {replica}: {e}"),
                Err(e) => last = format!("node {replica} answered garbage: {e}"),
            },
            Err(e) => last = e,
        }
    }
    Err(unavailable(&spec, last))
}

fn strings(answers: Vec<ReadAnswer>) -> Vec<String> {
    let mut all: Vec<String> = answers
        .into_iter()
        .flat_map(|a| match a {
            ReadAnswer::Strings(s) => s,
            _ => Vec::new(),
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

impl DataSource for ClusterSource {
    fn select_series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
    ) -> Result<Vec<SeriesRef>, DataSourceError> {
        let request = ReadRequest::Select {
            tenant: tenant.clone(),
            matchers: matchers.iter().map(WireMatcher::of).collect(),
        };
        let answers =
            self.per_group(|node, spec| read_group(node, spec, request.clone(), self.staleness))?;
        let mut out: Vec<SeriesRef> = answers
            .into_iter()
            .flat_map(|a| match a {
                ReadAnswer::Series(s) => s,
                _ => Vec::new(),
            })
            .map(|(id, labels)| SeriesRef {
                id: SeriesId(id),
                labels,
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out.dedup_by_key(|s| s.id);
        Ok(out)
    }

    fn samples(
        &self,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Sample>, DataSourceError> {
        self.samples_of(&Tenant::default(), series, start_ms, end_ms)
    }

    fn samples_of(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Sample>, DataSourceError> {
        let map = self.node.map();
        let spec = map.group_of(series.shard().0).cloned().ok_or_else(|| {
            DataSourceError::Unavailable(format!("no group holds series {series}"))
        })?;
        if self.node.router().raft(spec.group()).is_some() {
            // The selection that named the series passed the barrier already.
            return self
                .node
                .storage()
                .samples_of(tenant, series, start_ms, end_ms);
        }
        let request = ReadRequest::Samples {
            tenant: tenant.clone(),
            series: series.0,
            start_ms,
            end_ms,
        };
        let node = Arc::clone(&self.node);
        match self
            .runtime
            .block_on(read_group(node, spec, request, self.staleness))
        {
            Ok(ReadAnswer::Samples(s)) => Ok(s),
            Ok(_) => Ok(Vec::new()),
            Err(e) => self.tolerate(e).map(|()| Vec::new()),
        }
    }

    fn latest_sample(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Option<Sample>, DataSourceError> {
        let map = self.node.map();
        let local = map
            .group_of(series.shard().0)
            .is_some_and(|g| self.node.router().raft(g.group()).is_some());
        if local {
            // This node's last-value cache is kept by what its replica applies: exact here.
            return self
                .node
                .storage()
                .latest_sample(tenant, series, start_ms, end_ms);
        }
        Ok(self.samples_of(tenant, series, start_ms, end_ms)?.pop())
    }

    fn label_names(&self, tenant: &Tenant) -> Result<Vec<String>, DataSourceError> {
        let request = ReadRequest::LabelNames {
            tenant: tenant.clone(),
        };
        Ok(strings(self.per_group(|node, spec| {
            read_group(node, spec, request.clone(), self.staleness)
        })?))
    }

    fn label_values(&self, tenant: &Tenant, name: &str) -> Result<Vec<String>, DataSourceError> {
        let request = ReadRequest::LabelValues {
            tenant: tenant.clone(),
            name: name.to_owned(),
        };
        Ok(strings(self.per_group(|node, spec| {
            read_group(node, spec, request.clone(), self.staleness)
        })?))
    }
}

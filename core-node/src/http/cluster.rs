//! The cluster's admin routes (role `admin`; docs/cluster.md):
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/v1/admin/cluster` | 200, `data`: this node's view: its id, the map's version and replication factor, the nodes, and per group its shards, replicas and (where this node holds one) its replica's Raft state, leader, log and applied indexes |
//! | `GET /api/v1/admin/cluster/checksums` | 200, `data`: `{"node_id","groups":{"<id>":{"applied_index","series","samples","hash"}}}` for the groups this node holds a replica of: replicas at the same applied index hold the same data exactly when these agree (reads every sample) |
//! | `POST /api/v1/admin/cluster/init` with `{"nodes":[{"id":1,"cluster":"host:7401","http":"host:9201"},…],"replication_factor":3,"groups_per_node":4}` | 200, `data`: the first cluster map; 400 when the plan is impossible or the cluster exists |
//!
//! A node started without `--node-id` answers 400 `this node is not clustered` to both.

use super::Api;
use super::error::{ApiError, Reason};
use super::response::json_response;
use crate::cluster::node::ClusterError;
use crate::cluster::types::NodeAddr;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::BTreeMap;

fn success(data: serde_json::Value) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::json!({ "status": "success", "data": data }).to_string(),
    )
}

fn not_clustered() -> Response {
    ApiError::bad_data(
        "this node is not clustered (start it with --node-id; docs/cluster.md)",
        Reason::BadParam,
    )
    .into_response()
}

pub(crate) async fn checksums(State(api): State<Api>) -> Response {
    let Some(node) = &api.state.cluster else {
        return not_clustered();
    };
    match node.checksums().await {
        Ok(sums) => success(sums),
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}

pub(crate) async fn status(State(api): State<Api>) -> Response {
    match &api.state.cluster {
        Some(node) => success(node.status()),
        None => not_clustered(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InitNode {
    id: u64,
    cluster: String,
    http: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InitRequest {
    nodes: Vec<InitNode>,
    #[serde(default = "default_rf")]
    replication_factor: usize,
    #[serde(default = "default_groups_per_node")]
    groups_per_node: usize,
}

fn default_rf() -> usize {
    3
}

fn default_groups_per_node() -> usize {
    4
}

pub(crate) async fn init(State(api): State<Api>, body: Bytes) -> Response {
    let Some(node) = &api.state.cluster else {
        return not_clustered();
    };
    let request: InitRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_data(format!("invalid init request: {e}"), Reason::BadParam)
                .into_response();
        }
    };
    let mut nodes = BTreeMap::new();
    for n in request.nodes {
        if n.id == 0
            || nodes
                .insert(
                    n.id,
                    NodeAddr {
                        cluster: n.cluster,
                        http: n.http,
                    },
                )
                .is_some()
        {
            return ApiError::bad_data(
                format!("node id {} is zero or listed twice", n.id),
                Reason::BadParam,
            )
            .into_response();
        }
    }
    tracing::info!(target: "audit", nodes = nodes.len(), replication_factor = request.replication_factor, "cluster init requested");
    match node
        .init(nodes, request.replication_factor, request.groups_per_node)
        .await
    {
        Ok(map) => success(serde_json::to_value(map.as_ref()).unwrap_or_default()),
        Err(ClusterError::Refused(why)) => {
            ApiError::bad_data(why, Reason::BadParam).into_response()
        }
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
    }
}

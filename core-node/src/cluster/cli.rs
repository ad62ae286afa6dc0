//! `core-node cluster …`: create a cluster and look at it, through a running node's admin API
//! (plain HTTP; for a node serving HTTPS, send the same JSON with any HTTP client, see
//! docs/cluster.md).

use anyhow::{Context, bail};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The node's HTTP API [default: http://127.0.0.1:9201].
    #[arg(long, global = true, default_value = "http://127.0.0.1:9201")]
    pub url: String,
    /// An admin token (not needed for a node in --insecure-dev-mode).
    #[arg(long, global = true, env = "UPDRAFT_TOKEN")]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Create the cluster from nodes started with --node-id (run once, against one of the
    /// first three nodes by id: they become the metadata group's voters).
    Init {
        /// A node: ID=CLUSTER_ADDR,HTTP_ADDR (its --cluster-advertise and HTTP address);
        /// repeat for every node, this one included.
        #[arg(long = "node", value_name = "ID=CLUSTER,HTTP", required = true)]
        nodes: Vec<String>,
        /// Replicas of each shard group, 1–5 (at most the number of nodes).
        #[arg(long, default_value_t = 3)]
        replication_factor: usize,
        /// Shard group replicas per node on average (the cluster has nodes × this /
        /// replication factor groups).
        #[arg(long, default_value_t = 4)]
        groups_per_node: usize,
    },
    /// Print the node's view of the cluster (JSON): nodes, groups, leaders, applied indexes.
    Status,
}

fn node_json(spec: &str) -> anyhow::Result<serde_json::Value> {
    let (id, addrs) = spec
        .split_once('=')
        .with_context(|| format!("--node {spec:?}: expected ID=CLUSTER,HTTP"))?;
    let (cluster, http) = addrs
        .split_once(',')
        .with_context(|| format!("--node {spec:?}: expected ID=CLUSTER,HTTP"))?;
    let id: u64 = id
        .parse()
        .with_context(|| format!("--node {spec:?}: the id is not a number"))?;
    Ok(serde_json::json!({"id": id, "cluster": cluster, "http": http}))
}

/// Runs a `cluster` command; prints the answer's `data`.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let base = args.url.trim_end_matches('/');
    let auth = args.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut response = match args.command {
        ClusterCommand::Init {
            nodes,
            replication_factor,
            groups_per_node,
        } => {
            let nodes = nodes
                .iter()
                .map(|n| node_json(n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = serde_json::json!({
                "nodes": nodes,
                "replication_factor": replication_factor,
                "groups_per_node": groups_per_node,
            });
            let mut req = agent
                .post(format!("{base}/api/v1/admin/cluster/init"))
                .header("Content-Type", "application/json");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.send(body.to_string().as_bytes())
        }
        ClusterCommand::Status => {
            let mut req = agent.get(format!("{base}/api/v1/admin/cluster"));
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
    }
    .with_context(|| format!("calling {base}"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .context("reading the answer")?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{status}: {text}"))?;
    if status != 200 {
        bail!(
            "{status}: {}",
            json.get("error").and_then(|e| e.as_str()).unwrap_or(&text)
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(json.get("data").unwrap_or(&json))?
    );
    Ok(())
}

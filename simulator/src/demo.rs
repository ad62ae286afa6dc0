//! `simulator demo`: a whole local deployment in one process.
//!
//! Starts a core node and an edge agent on their default ports, creates certificates for
//! their mutual-TLS QUIC link under `<data-dir>/certs` on first use, then runs a simulated
//! fleet that publishes into the agent's embedded MQTT broker. The core runs in insecure
//! development mode (no API tokens; it listens on loopback only). Data lives under `--data-dir`
//! and survives restarts of the demo. Ctrl-C stops the fleet, then the agent (which finishes
//! shipping what it holds), then the core.

use crate::fleet::{self, FleetConfig, FleetStats};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory for the core's storage, the agent's buffer and the certificates.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Simulated devices (one MQTT connection each).
    #[arg(long, default_value_t = 12)]
    pub devices: usize,
    /// Sites the devices are spread over.
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Time between two readings of one device, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Seed of the fleet's random streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Core nodes: 1 is a single node; 2 to 5 form a cluster (replication factor 3, or the
    /// node count when smaller) with the agent shipping to all of them (docs/cluster.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub nodes: u64,
}

/// Node `i` (from 1) of a demo cluster: its data directory, HTTP, QUIC and cluster ports
/// (node 1 keeps the single node's ports; the edge agent's HTTP port 9202 is left alone).
fn node_config(
    args: &DemoArgs,
    certs_dir: &std::path::Path,
    i: u64,
) -> core_node::config::CoreConfig {
    let mut config = core_node::config::CoreConfig::local(&args.data_dir.join("core"), certs_dir);
    // A local demo on loopback: no tokens needed (the node logs a loud warning). A real
    // deployment creates tokens instead: see docs/security.md.
    config.insecure_dev_mode = true;
    if args.nodes == 1 {
        return config;
    }
    let port = |base: u64, step: u64| u16::try_from(base + step * (i - 1)).unwrap_or_default();
    config.data_dir = args.data_dir.join(format!("core-{i}"));
    config.http_listen = SocketAddr::from(([127, 0, 0, 1], port(9201, 10)));
    config.quic_listen = SocketAddr::from(([127, 0, 0, 1], port(4433, 1)));
    let listen = SocketAddr::from(([127, 0, 0, 1], port(7401, 1)));
    config.cluster = Some(core_node::config::ClusterConfig {
        node_id: i,
        listen,
        advertise: listen.to_string(),
        cert: certs_dir.join(format!("node-{i}.pem")),
        key: certs_dir.join(format!("node-{i}-key.pem")),
        heartbeat: Duration::from_millis(core_node::config::DEFAULT_RAFT_HEARTBEAT_MS),
        election_timeout: Duration::from_millis(
            core_node::config::DEFAULT_RAFT_ELECTION_TIMEOUT_MS,
        ),
    });
    config
}

/// `POST path` with a JSON body over HTTP/1.0; the status line and body.
async fn post_json(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

/// Creates the demo cluster through node 1 (a restarted demo finds it created already).
async fn init_cluster(
    args: &DemoArgs,
    nodes: &[core_node::config::CoreConfig],
) -> anyhow::Result<()> {
    let list: Vec<serde_json::Value> = nodes
        .iter()
        .filter_map(|c| {
            let cluster = c.cluster.as_ref()?;
            Some(serde_json::json!({
                "id": cluster.node_id,
                "cluster": cluster.advertise,
                "http": c.http_listen.to_string(),
            }))
        })
        .collect();
    let body = serde_json::json!({
        "nodes": list,
        "replication_factor": args.nodes.min(3),
    });
    let answer = post_json(
        nodes[0].http_listen,
        "/api/v1/admin/cluster/init",
        &body.to_string(),
    )
    .await?;
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    if status == "200" || answer.contains("already initialised") {
        return Ok(());
    }
    anyhow::bail!("creating the demo cluster: {answer}")
}

fn stop_signal(
    rx: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Waits until `GET /health` on `addr` answers 200. A bare TCP probe would do for HTTP, but
/// the agent's health also covers its MQTT listeners (it completes a real CONNECT), and probing
/// the broker with a bare TCP connect makes rumqttd log an error.
async fn wait_healthy(what: &str, addr: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..300 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            let mut head = [0u8; 12];
            let asked = stream
                .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await
                .is_ok();
            if asked && stream.read_exact(&mut head).await.is_ok() && head.ends_with(b" 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{what} did not become healthy at http://{addr}/health")
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let certs_dir = args.data_dir.join("certs");
    core_node::certs::ensure(&core_node::certs::CertRequest {
        dir: certs_dir.clone(),
        core_hosts: core_node::certs::CertRequest::default_hosts(),
        agent_id: "demo-agent".into(),
        agent_tenant: protocols::Tenant::default(),
        force: false,
    })
    .context("creating demo certificates")?;

    // One recorder for the process: each component's metrics carry its own prefix
    // (updraft_core_*, updraft_edge_*), so both /metrics endpoints show both sets here.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let configs: Vec<core_node::config::CoreConfig> = (1..=args.nodes)
        .map(|i| node_config(&args, &certs_dir, i))
        .collect();
    let mut cores = Vec::new();
    for config in &configs {
        if let Some(cluster) = &config.cluster {
            core_node::certs::ensure_node(
                &certs_dir,
                cluster.node_id,
                &core_node::certs::CertRequest::default_hosts(),
                false,
            )
            .context("creating the demo's node certificates")?;
        }
        let http = config.http_listen;
        let mut core = tokio::spawn(core_node::run(
            config.clone(),
            metrics.clone(),
            stop_signal(&stop_rx),
        ));
        tokio::select! {
            ready = wait_healthy("core node", http) => ready?,
            exited = &mut core => {
                let _ = stop_tx.send(true);
                return match exited {
                    Ok(Err(e)) => Err(e.context("core node failed to start")),
                    _ => Err(anyhow::anyhow!("core node stopped during start-up")),
                };
            }
        }
        cores.push(core);
    }
    if args.nodes > 1 {
        init_cluster(&args, &configs).await?;
    }
    let http = configs[0].http_listen;
    let mut core = futures_first(cores);

    let agent_config = edge_agent::config::AgentConfig {
        agent_id: protocols::wire::AgentId("demo-agent".into()),
        data_dir: args.data_dir.join("edge"),
        ca: certs_dir.join("ca.pem"),
        cert: certs_dir.join("agent.pem"),
        key: certs_dir.join("agent-key.pem"),
        core: configs
            .iter()
            .map(|c| edge_agent::config::CoreEndpoint {
                host: c.quic_listen.ip().to_string(),
                port: c.quic_listen.port(),
            })
            .collect(),
        ..Default::default()
    };
    let mqtt = agent_config.mqtt_listen;
    let mqtt5 = agent_config.mqtt5_listen;
    let agent_http = agent_config.http_listen;
    let (agent_stop_tx, agent_stop_rx) = watch::channel(false);
    let mut agent = tokio::spawn(edge_agent::run(
        agent_config,
        metrics,
        stop_signal(&agent_stop_rx),
    ));
    tokio::select! {
        ready = wait_healthy("edge agent", agent_http) => ready?,
        exited = &mut agent => {
            let _ = stop_tx.send(true);
            return match exited {
                Ok(Err(e)) => Err(e.context("edge agent failed to start")),
                _ => Err(anyhow::anyhow!("edge agent stopped during start-up")),
            };
        }
    }

    let stats = Arc::new(FleetStats::default());
    let (fleet_stop_tx, fleet_stop_rx) = watch::channel(false);
    let fleet_task = tokio::spawn(fleet::run(
        FleetConfig {
            host: mqtt.ip().to_string(),
            port: mqtt.port(),
            devices: args.devices,
            sites: args.sites,
            interval: Duration::from_millis(args.interval_ms.max(1)),
            seed: args.seed,
            qos: rumqttc::QoS::AtLeastOnce,
        },
        stats.clone(),
        stop_signal(&fleet_stop_rx),
    ));

    print_banner(&args, mqtt, mqtt5, http, agent_http);
    if args.nodes > 1 {
        let others: Vec<String> = configs[1..]
            .iter()
            .map(|c| format!("http://{}", c.http_listen))
            .collect();
        println!(
            "A cluster of {} nodes: the others answer at {} (any node takes writes and \
             queries; the cluster's state: curl http://{http}/api/v1/admin/cluster).\n",
            args.nodes,
            others.join(", ")
        );
    }

    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = report.tick() => println!("fleet: {}", stats.summary()),
            _ = &mut core => { eprintln!("core node stopped unexpectedly"); break; }
            _ = &mut agent => { eprintln!("edge agent stopped unexpectedly"); break; }
        }
    }
    println!("stopping: fleet, then edge agent, then core node");
    let _ = fleet_stop_tx.send(true);
    let _ = fleet_task.await;
    let _ = agent_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), core).await;
    println!("{}", stats.summary());
    println!("data kept in {}", args.data_dir.display());
    Ok(())
}

/// Resolves when the first of the cores' tasks ends (a core that stops ends the demo).
fn futures_first(
    cores: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for core in cores {
            set.spawn(async move {
                let _ = core.await;
            });
        }
        let _ = set.join_next().await;
    })
}

fn print_banner(
    args: &DemoArgs,
    mqtt: SocketAddr,
    mqtt5: SocketAddr,
    http: SocketAddr,
    agent_http: SocketAddr,
) {
    println!(
        r#"
Updraft demo is running ({devices} simulated devices, data in {data}).

  MQTT broker (edge agent)   mqtt://{mqtt}   (MQTT 5: {mqtt5})
  Prometheus HTTP API (core) http://{http}
  Metrics                    http://{http}/metrics   http://{agent_http}/metrics

Try:
  curl -G 'http://{http}/api/v1/query' --data-urlencode 'query=temperature_celsius{{site="site0"}}'
  curl -G 'http://{http}/api/v1/query_range' --data-urlencode 'query=env_pressure_hpa{{device="dev1"}}' \
       -d start=$(($(date +%s)-60)) -d end=$(date +%s) -d step=10
  curl 'http://{http}/api/v1/label/__name__/values'

Publish your own reading and query it:
  mosquitto_pub -h {mqtt_host} -p {mqtt_port} -t site1/dev1/temp -m 21.5
  curl 'http://{http}/api/v1/query?query=temp'

The core runs in insecure development mode (no tokens needed, loopback only). A real
deployment needs API tokens: `core-node tokens create --tenant default --role read`
(docs/security.md).

Ctrl-C stops the demo.
"#,
        devices = args.devices,
        data = args.data_dir.display(),
        mqtt_host = mqtt.ip(),
        mqtt_port = mqtt.port(),
    );
}

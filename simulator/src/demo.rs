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
    let mut core_config =
        core_node::config::CoreConfig::local(&args.data_dir.join("core"), &certs_dir);
    // A local demo on loopback: no tokens needed (the node logs a loud warning). A real
    // deployment creates tokens instead: see docs/security.md.
    core_config.insecure_dev_mode = true;
    let http = core_config.http_listen;
    let mut core = tokio::spawn(core_node::run(
        core_config,
        metrics.clone(),
        stop_signal(&stop_rx),
    ));
    tokio::select! {
        ready = wait_healthy("core node", http) => ready?,
        exited = &mut core => {
            return match exited {
                Ok(Err(e)) => Err(e.context("core node failed to start")),
                _ => Err(anyhow::anyhow!("core node stopped during start-up")),
            };
        }
    }

    let agent_config = edge_agent::config::AgentConfig {
        agent_id: protocols::wire::AgentId("demo-agent".into()),
        data_dir: args.data_dir.join("edge"),
        ca: certs_dir.join("ca.pem"),
        cert: certs_dir.join("agent.pem"),
        key: certs_dir.join("agent-key.pem"),
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

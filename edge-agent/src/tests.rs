//! The whole agent in-process on port 0, with no core reachable: it must start, report healthy,
//! take MQTT publishes into the buffer, count bad ones, and stop cleanly.

use super::*;
use protocols::model::Labels;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes a self-signed certificate used as CA and as client certificate; the agent only needs
/// the files to be valid, no core is contacted successfully here.
fn write_certs(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    s.read_to_string(&mut response).await.expect("read");
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// MQTT 3.1.1: CONNECT, wait for CONNACK, QoS 0 PUBLISH each message, DISCONNECT.
async fn publish(addr: SocketAddr, messages: &[(&str, &[u8])]) {
    let mut s = TcpStream::connect(addr).await.expect("connect mqtt");
    s.write_all(&broker::connect_packet(broker::MqttVersion::V311))
        .await
        .expect("connect");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.expect("connack");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    for (topic, payload) in messages {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(payload);
        assert!(body.len() < 128, "one-byte remaining length");
        let mut packet = vec![0x30, body.len() as u8];
        packet.extend_from_slice(&body);
        s.write_all(&packet).await.expect("publish");
    }
    s.write_all(&[0xE0, 0x00]).await.expect("disconnect");
}

async fn wait_for_metrics(addr: SocketAddr, wanted: &[&str]) -> String {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, body) = http_get(addr, "/metrics").await;
            if wanted.iter().all(|w| body.lines().any(|l| l == *w)) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match waited {
        Ok(body) => body,
        Err(_) => {
            let (_, body) = http_get(addr, "/metrics").await;
            panic!("metrics never showed {wanted:?}:\n{body}");
        }
    }
}

/// Agents in this binary run one at a time: each start resets the shared counters, and the
/// first test reads exact values.
static ONE_AGENT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Launchers `tokio::spawn` the agent, so its future must be `Send + 'static`.
#[test]
fn run_can_be_spawned() {
    fn assert_spawnable<F: Future + Send + 'static>(_: &F) {}
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let future = run(AgentConfig::default(), handle, async {});
    assert_spawnable(&future);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_a_core_buffers_publishes_and_stops_cleanly() {
    let _one = ONE_AGENT_AT_A_TIME.lock().await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // The only test in this binary that installs a global recorder.
    metrics::set_global_recorder(recorder).expect("first recorder");

    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_certs(dir.path());
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let config = AgentConfig {
        mqtt_listen: any_port,
        mqtt5_listen: any_port,
        http_listen: any_port,
        data_dir: dir.path().join("data"),
        // Discard port: nothing answers QUIC there.
        core: vec!["127.0.0.1:9".parse().expect("endpoint")],
        ca: cert.clone(),
        cert,
        key,
        ..AgentConfig::default()
    };
    let agent = Agent::start(config, handle).await.expect("agent starts");
    assert_ne!(agent.mqtt_addr.port(), agent.mqtt5_addr.port());

    assert_eq!(
        http_get(agent.http_addr, "/health").await,
        (200, "ok".to_owned())
    );

    publish(
        agent.mqtt_addr,
        &[
            ("plant1/pump7/temp", b"21.5"),
            ("plant1/pump7/temp", b"warm"),
            ("too/many/levels/here", b"1"),
            ("plant1/pump7/env", br#"{"hum": 40, "ok": true}"#),
        ],
    )
    .await;
    let metrics = wait_for_metrics(
        agent.http_addr,
        &[
            "updraft_edge_messages_received_total 4",
            "updraft_edge_samples_buffered_total 3",
            r#"updraft_edge_messages_rejected_total{reason="not_a_number"} 1"#,
            r#"updraft_edge_messages_rejected_total{reason="topic_mismatch"} 1"#,
        ],
    )
    .await;
    // Registered before their first event (values are shared with the uplink unit tests, which
    // run in the same process, so only presence is checked).
    for series in [
        r#"updraft_edge_samples_dropped_total{reason="rejected_by_core"} "#,
        r#"updraft_edge_uplink_errors_total{endpoint="127.0.0.1:9"} "#,
        r#"updraft_edge_messages_rejected_total{reason="invalid_timestamp"} "#,
        "updraft_edge_buffer_bytes ",
    ] {
        assert!(metrics.contains(series), "missing {series}");
    }

    let http_addr = agent.http_addr;
    agent.run_until(async {}).await.expect("clean stop");
    assert!(
        TcpStream::connect(http_addr).await.is_err(),
        "the HTTP listener is closed after shutdown"
    );

    // Everything accepted is in the buffer, unacknowledged, for the next start to ship.
    let options = LogOptions {
        segment_max_bytes: 1 << 20,
    };
    let (_, reader, recovery) =
        buffer::open(&dir.path().join("data/buffer"), options).expect("reopen");
    assert_eq!(recovery.acked, buffer::Offset(0));
    let chunk = reader.read(recovery.acked, usize::MAX).expect("read");
    let mut series: Vec<(String, f64)> = chunk
        .records
        .iter()
        .flat_map(|r| buffer::record::decode(&r.payload).expect("decodes").series)
        .flat_map(|s| {
            let labels: Labels = s.labels;
            s.samples
                .into_iter()
                .map(move |x| (labels.to_string(), x.value))
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        series,
        [
            (r#"env_hum{device="pump7",site="plant1"}"#.to_owned(), 40.0),
            (r#"env_ok{device="pump7",site="plant1"}"#.to_owned(), 1.0),
            (r#"temp{device="pump7",site="plant1"}"#.to_owned(), 21.5),
        ]
    );
}

/// The buffer's thread panics (test hook) after its first append: `/health` turns 503 with
/// the reason while the agent keeps serving it for the exit delay, then `run_until` returns
/// the error (main exits 1), not sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_buffer_is_reported_then_the_agent_exits_with_an_error() {
    let _one = ONE_AGENT_AT_A_TIME.lock().await;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = write_certs(dir.path());
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let exit_delay = Duration::from_millis(1500);
    let config = AgentConfig {
        mqtt_listen: any_port,
        mqtt5_listen: any_port,
        http_listen: any_port,
        data_dir: dir.path().join("data"),
        core: vec!["127.0.0.1:9".parse().expect("endpoint")],
        ca: cert.clone(),
        cert,
        key,
        buffer_failure_exit_delay: exit_delay,
        ..AgentConfig::default()
    };
    let agent = Agent::start_with(config, handle, Some(1))
        .await
        .expect("agent starts");
    let (http_addr, mqtt_addr) = (agent.http_addr, agent.mqtt_addr);
    assert_eq!(http_get(http_addr, "/health").await, (200, "ok".to_owned()));
    let running = tokio::spawn(agent.run_until(std::future::pending()));

    publish(mqtt_addr, &[("plant1/pump7/temp", b"21.5")]).await;
    let failed_at = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, body) = http_get(http_addr, "/health").await;
            if status == 503 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("/health turns 503");
    assert!(
        body.contains("buffer failed") && body.contains("after buffer append 1"),
        "{body}"
    );
    assert!(!running.is_finished(), "exited before the exit delay");

    let result = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the agent exits")
        .expect("run_until did not panic");
    let err = result.expect_err("a failed buffer is an error");
    assert!(format!("{err:#}").contains("panicked"), "{err:#}");
    // Measured from when the failure was seen, which is after it happened: a lower bound
    // with the polling interval as slack.
    assert!(
        failed_at.elapsed() + Duration::from_millis(100) >= exit_delay,
        "exited after {:?}, before the {exit_delay:?} delay",
        failed_at.elapsed()
    );
}

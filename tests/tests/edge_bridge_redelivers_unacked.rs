//! Bridge mode against a real mosquitto broker: the agent subscribes with a persistent session
//! and QoS 1 and acknowledges each message only after its fsync. The agent is frozen
//! (SIGSTOP) while messages keep arriving, so mosquitto has sent some it never got a PUBACK
//! for, then killed with SIGKILL, and a second kill -9 hits it in the middle of a stream.
//! After each restart the broker must redeliver what was not acknowledged (DUP flag, counted)
//! and the core must hold every message exactly once (payloads carry their own timestamp, and
//! the core keeps one sample per series and timestamp).

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use updraft_tests::{Agent, Core, Mosquitto, make_certs, mosquitto_pub_lines, signal, wait_for};

fn lines(base_ms: i64, from: usize, to: usize) -> String {
    (from..to)
        .map(|i| format!("{{\"ts\":{},\"v\":{i}}}\n", base_ms + i as i64))
        .collect()
}

/// (count, sum of values) of `bridge_v` in the core.
fn stored(core: &Core, at: f64) -> (usize, f64) {
    let series = core.raw_samples("bridge_v", "1d", at).unwrap_or_default();
    let points: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points_ms.iter().map(|p| p.1))
        .collect();
    (points.len(), points.iter().sum())
}

#[test]
fn unacknowledged_messages_are_redelivered_after_kill9_and_stored_once() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let mosquitto = Mosquitto::start(work.path())?;
    let core = Core::start(work.path(), &certs)?;
    let broker = format!("127.0.0.1:{}", mosquitto.port);
    let args = [
        "--bridge-broker",
        broker.as_str(),
        "--bridge-topic",
        "site/#",
    ];
    let topic = "site/d1/bridge";
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let base = now_ms - 3_600_000;
    let qos1 = ["-q", "1", "-M", "100"];

    // 1. Normal flow: everything is buffered.
    let mut agent = Agent::start(work.path(), &certs, core.quic, &args)?;
    wait_for("the bridge to subscribe", Duration::from_secs(30), || {
        agent
            .process
            .log_text()
            .contains("bridge subscribed")
            .then_some(())
    })?;
    mosquitto_pub_lines(mosquitto.port, topic, &lines(base, 0, 2000), &qos1)?;
    wait_for("2000 messages buffered", Duration::from_secs(60), || {
        (agent.metric("updraft_edge_samples_buffered_total") >= 2000.0).then_some(())
    })?;

    // 2. Frozen agent: mosquitto sends up to its inflight window into the socket and queues
    // the rest for the session; none of it can be acknowledged. Then kill -9.
    signal(agent.process.pid(), "STOP")?;
    mosquitto_pub_lines(mosquitto.port, topic, &lines(base, 2000, 4000), &qos1)?;
    std::thread::sleep(Duration::from_millis(500));
    agent.process.kill9();
    drop(agent);

    let agent = Agent::start(work.path(), &certs, core.quic, &args)?;
    wait_for(
        "the rest after the restart",
        Duration::from_secs(60),
        || (agent.metric("updraft_edge_messages_received_total") >= 2000.0).then_some(()),
    )?;
    let redelivered = agent.metric("updraft_edge_bridge_redelivered_total");
    assert!(
        redelivered > 0.0,
        "mosquitto redelivered (DUP) what the frozen agent had received but not acknowledged"
    );

    // 3. kill -9 in the middle of a stream.
    let port = mosquitto.port;
    let publisher = std::thread::spawn(move || {
        mosquitto_pub_lines(
            port,
            topic,
            &lines(base, 4000, 24_000),
            &["-q", "1", "-M", "100"],
        )
    });
    let mut agent = agent;
    wait_for("the stream to be flowing", Duration::from_secs(60), || {
        (agent.metric("updraft_edge_messages_received_total") >= 5000.0).then_some(())
    })?;
    agent.process.kill9();
    drop(agent);
    let agent = Agent::start(work.path(), &certs, core.quic, &args)?;
    publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;

    // Every message, exactly once: count and sum of 0..24000.
    let total = 24_000usize;
    let expected_sum = (total * (total - 1) / 2) as f64;
    let mut last = (0, 0.0);
    let at = (now_ms as f64) / 1000.0 + 60.0;
    let done = wait_for(
        "every message in the core",
        Duration::from_secs(120),
        || {
            last = stored(&core, at);
            (last.0 >= total).then_some(())
        },
    );
    assert!(
        done.is_ok(),
        "the core holds {} of {total} messages",
        last.0
    );
    let (count, sum) = stored(&core, at);
    assert_eq!(count, total, "each message stored exactly once");
    assert_eq!(sum, expected_sum, "values 0..{total} each once");
    eprintln!(
        "bridge: {total} messages stored once; redelivered after restarts: {}",
        redelivered + agent.metric("updraft_edge_bridge_redelivered_total")
    );
    drop(mosquitto);
    Ok(())
}

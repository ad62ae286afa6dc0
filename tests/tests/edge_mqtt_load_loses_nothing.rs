//! Several real `mosquitto_pub -l` clients publish 200,000 QoS 1 messages as fast as they can
//! into a real edge agent, which ships them to a real core. Every message must be counted by
//! the agent, fsynced into its buffer and stored by the core: the agent acknowledges a QoS 1
//! publish only after its fsync and slows publishers down through TCP when it falls behind, so
//! nothing may be lost. A QoS 0 run follows (the same back-pressure applies while the
//! connection stays up). The rate is printed, never asserted.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use updraft_tests::{Agent, Core, make_certs, mosquitto_pub_lines, wait_for};

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 50_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Publishes `PER_PUBLISHER` JSON messages from each of `PUBLISHERS` processes in parallel on
/// `load/p<k>/<metric>`, each with its own timestamp; returns the seconds it took until the
/// agent had buffered `expected_buffered` samples.
fn publish_all(
    agent: &Agent,
    metric: &str,
    qos: &str,
    base_ms: i64,
    expected_buffered: f64,
) -> anyhow::Result<f64> {
    let port = agent.mqtt_port;
    let start = Instant::now();
    let handles: Vec<_> = (0..PUBLISHERS)
        .map(|k| {
            let topic = format!("load/p{k}/{metric}");
            let qos = qos.to_owned();
            std::thread::spawn(move || {
                let mut lines = String::with_capacity(PER_PUBLISHER * 40);
                for i in 0..PER_PUBLISHER {
                    lines.push_str(&format!("{{\"ts\":{},\"v\":{i}}}\n", base_ms + i as i64));
                }
                mosquitto_pub_lines(port, &topic, &lines, &["-q", &qos, "-M", "1000"])
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    }
    wait_for(
        "every sample in the agent's buffer",
        Duration::from_secs(300),
        || (agent.metric("updraft_edge_samples_buffered_total") >= expected_buffered).then_some(()),
    )?;
    Ok(start.elapsed().as_secs_f64())
}

fn stored(core: &Core, metric: &str) -> f64 {
    let answer = core.query(&format!("sum(count_over_time({metric}_v[1d]))"), None);
    answer
        .ok()
        .and_then(|a| a["data"]["result"][0]["value"][1].as_str()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn qos1_publishes_at_full_speed_are_all_buffered_and_stored() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let agent = Agent::start(work.path(), &certs, core.quic, &[])?;
    let total = (PUBLISHERS * PER_PUBLISHER) as f64;
    let base = now_ms() - 3_600_000;

    let secs = publish_all(&agent, "qos1", "1", base, total)?;
    eprintln!(
        "QoS 1: {total} messages from {PUBLISHERS} mosquitto_pub processes buffered in {secs:.2} s \
         = {:.0} msgs/s",
        total / secs
    );
    assert_eq!(agent.metric("updraft_edge_messages_received_total"), total);
    assert_eq!(agent.metric("updraft_edge_samples_buffered_total"), total);
    let mut last = 0.0;
    let found = wait_for(
        "every QoS 1 sample in the core",
        Duration::from_secs(300),
        || {
            last = stored(&core, "qos1");
            (last >= total).then_some(())
        },
    );
    assert!(
        found.is_ok(),
        "the core stored {last} of {total} QoS 1 samples"
    );
    assert_eq!(stored(&core, "qos1"), total, "each sample exactly once");

    // QoS 0: no acknowledgement, but the same back-pressure; the clients exit only after
    // writing everything, so every message reaches the agent.
    let secs = publish_all(&agent, "qos0", "0", base, 2.0 * total)?;
    eprintln!(
        "QoS 0: {total} messages buffered in {secs:.2} s = {:.0} msgs/s",
        total / secs
    );
    assert_eq!(
        agent.metric("updraft_edge_messages_received_total"),
        2.0 * total
    );
    let found = wait_for(
        "every QoS 0 sample in the core",
        Duration::from_secs(300),
        || {
            last = stored(&core, "qos0");
            (last >= total).then_some(())
        },
    );
    assert!(
        found.is_ok(),
        "the core stored {last} of {total} QoS 0 samples"
    );
    assert_eq!(
        agent.metric("updraft_edge_messages_rejected_total"),
        0.0,
        "no message was refused"
    );
    Ok(())
}

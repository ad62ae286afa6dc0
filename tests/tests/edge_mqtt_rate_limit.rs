//! `--mqtt-max-publish-rate`: a device publishing faster than its rate is slowed down, not
//! dropped. A real `mosquitto_pub -l` sends a burst of QoS 1 messages well above the rate into
//! a real agent; every message must be stored by the real core, and the agent must have held
//! the connection back (`updraft_edge_mqtt_throttled_total`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use updraft_tests::{Agent, Core, make_certs, mosquitto_pub_lines, wait_for};

const RATE: usize = 20;
const MESSAGES: usize = 3 * RATE;

#[test]
fn a_device_over_its_publish_rate_is_slowed_down_and_loses_nothing() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let agent = Agent::start(
        work.path(),
        &certs,
        core.quic,
        &["--mqtt-max-publish-rate", &RATE.to_string()],
    )?;
    let base = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 - 600_000;
    let lines: String = (0..MESSAGES)
        .map(|i| format!("{{\"ts\":{},\"v\":{i}}}\n", base + i as i64 * 1000))
        .collect();
    mosquitto_pub_lines(agent.mqtt_port, "rate/dev1/paced", &lines, &["-q", "1"])?;

    // The burst allowance is RATE messages; the rest had to wait.
    let throttled = agent.metric("updraft_edge_mqtt_throttled_total");
    assert!(
        throttled >= (MESSAGES - RATE) as f64,
        "only {throttled} publishes were held back"
    );
    wait_for("every message stored", Duration::from_secs(60), || {
        let answer = core.query("count_over_time(paced_v[1h])", None).ok()?;
        let n: f64 = answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()?;
        (n == MESSAGES as f64).then_some(())
    })?;
    Ok(())
}

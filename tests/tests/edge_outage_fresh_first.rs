//! The uplink to the core is cut (the core is killed and stays down), samples keep arriving,
//! then the core comes back: no sample is lost, every series reads back in order, and data
//! published after the restore is visible while the backlog is still draining.
//!
//! The outage lasts `UPDRAFT_TEST_OUTAGE_SECS` seconds: 60 by default, the edge issue's
//! scenario (set it lower for a quick local run).

use std::time::Duration;
use updraft_tests::*;

fn outage() -> Duration {
    let secs = std::env::var("UPDRAFT_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[test]
fn uplink_cut_then_restored_loses_nothing_and_fresh_data_comes_first() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let mut core = Core::start(work.path(), &certs)?;
    // A slow backlog lane (20 samples/s) makes "fresh before the backlog is done" observable.
    let agent = Agent::start(
        work.path(),
        &certs,
        core.quic,
        &["--backlog-rate", "20", "--batch-max-samples", "20"],
    )?;

    core.process.kill9();
    let t0_ms: i64 = 1_700_000_000_000;
    let total: i64 = 300;
    let mut publisher = LinePublisher::start(
        agent.mqtt_port,
        "plant/press1/backlog",
        work.path().join("pub.log"),
    )?;
    let started = std::time::Instant::now();
    for i in 0..total {
        publisher.send(&format!(r#"{{"ts":{},"v":{i}}}"#, t0_ms + i * 1000))?;
    }
    publisher.finish(Duration::from_secs(30))?;
    wait_for("every sample buffered", Duration::from_secs(30), || {
        (agent.metric("updraft_edge_samples_buffered_total") >= total as f64).then_some(())
    })?;
    std::thread::sleep(outage().saturating_sub(started.elapsed()));
    // The agent has noticed the outage (its QUIC idle timeout is 5 s) before the core returns.
    wait_for("a failed delivery", Duration::from_secs(30), || {
        (agent.metric("updraft_edge_uplink_errors_total") > 0.0).then_some(())
    })?;
    core = core.restart_after_kill9()?;

    // Fresh data, published after the restore, shows up before the backlog has drained.
    let fresh_ts = now_ms();
    agent.publish(
        "plant/press1/fresh",
        format!(r#"{{"ts":{fresh_ts},"v":1}}"#).as_bytes(),
    )?;
    let backlog_when_fresh_seen = wait_for("the fresh sample", Duration::from_secs(60), || {
        let fresh = core.query("fresh_v", Some(fresh_ts as f64 / 1000.0)).ok()?;
        let found = fresh["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty());
        found.then(|| {
            let at = (t0_ms + total * 1000) as f64 / 1000.0;
            core.instant_value(
                &format!("count_over_time(backlog_v[{}s])", total + 5),
                Some(at),
            )
        })
    })?;
    // A failed query is an error; an empty answer is a backlog not started yet.
    let backlog_when_fresh_seen = backlog_when_fresh_seen?.unwrap_or(0.0);
    assert!(
        backlog_when_fresh_seen < total as f64,
        "the fresh sample was only visible after the whole backlog ({backlog_when_fresh_seen})"
    );

    // Then every backlog sample arrives, each at its own timestamp, in order.
    let t0 = t0_ms as f64 / 1000.0;
    let expected: Vec<(f64, f64)> = (0..total).map(|k| (t0 + k as f64, k as f64)).collect();
    core.wait_for_points(
        "backlog_v",
        (t0, t0 + (total - 1) as f64, 1.0),
        &expected,
        Duration::from_secs(120),
    )?;
    let m = agent.metrics();
    assert_eq!(
        metric_sum(&m, "updraft_edge_samples_dropped_total", None),
        0.0
    );
    assert!(metric_sum(&m, "updraft_edge_uplink_errors_total", None) > 0.0);
    Ok(())
}

#[test]
fn agent_kill9_during_an_outage_loses_no_acknowledged_sample() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let mut core = Core::start(work.path(), &certs)?;
    let mut agent = Agent::start(work.path(), &certs, core.quic, &[])?;
    core.process.kill9();

    // Every message is published at QoS 1: mosquitto_pub returns once the agent acknowledged
    // it, which the agent does only after its fsync.
    let t0_ms: i64 = 1_700_100_000_000;
    let total: i64 = 200;
    let mut publisher = LinePublisher::start(
        agent.mqtt_port,
        "plant/press2/kill",
        work.path().join("pub.log"),
    )?;
    for i in 0..total {
        publisher.send(&format!(r#"{{"ts":{},"v":{i}}}"#, t0_ms + i * 1000))?;
    }
    publisher.finish(Duration::from_secs(30))?;
    agent.process.kill9();
    drop(agent);

    core = core.restart_after_kill9()?;
    agent = Agent::start(work.path(), &certs, core.quic, &[])?;
    let t0 = t0_ms as f64 / 1000.0;
    let expected: Vec<(f64, f64)> = (0..total).map(|k| (t0 + k as f64, k as f64)).collect();
    core.wait_for_points(
        "kill_v",
        (t0, t0 + (total - 1) as f64, 1.0),
        &expected,
        Duration::from_secs(60),
    )?;
    drop(agent);
    Ok(())
}

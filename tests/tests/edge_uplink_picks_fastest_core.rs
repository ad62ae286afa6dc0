//! Two real cores, one of them 80 ms away (behind a userspace UDP proxy that delays each
//! direction by 40 ms) and listed first: the agent measures both, sends to the near one, fails
//! over to the far one when the near one is killed, and comes back once it is up again. No
//! sample is lost: the two cores together hold every one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use updraft_tests::*;

const T0_MS: i64 = 1_700_000_000_000;
const ONE_WAY: Duration = Duration::from_millis(40);

fn gauge(agent: &Agent, name: &str, endpoint: &str) -> f64 {
    metric_sum(
        &agent.metrics(),
        name,
        Some(&format!("endpoint=\"{endpoint}\"")),
    )
}

/// Every `(timestamp ms, value)` of `rtt_v` the core holds.
fn stored(core: &Core, total: i64) -> anyhow::Result<BTreeMap<i64, f64>> {
    let at = (T0_MS + total * 1000) as f64 / 1000.0;
    let series = core.raw_samples("rtt_v", &format!("{}s", total + 10), at)?;
    Ok(series.into_iter().flat_map(|s| s.points_ms).collect())
}

fn publish(
    publisher: &mut LinePublisher,
    range: std::ops::Range<i64>,
    gap: Duration,
) -> anyhow::Result<()> {
    for i in range {
        publisher.send(&format!(r#"{{"ts":{},"v":{i}}}"#, T0_MS + i * 1000))?;
        std::thread::sleep(gap);
    }
    Ok(())
}

#[test]
fn agent_uses_the_nearest_core_and_fails_over_without_losing_samples() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let (near_dir, far_dir, agent_dir) = (
        work.path().join("near"),
        work.path().join("far"),
        work.path().join("agent"),
    );
    for d in [&near_dir, &far_dir, &agent_dir] {
        std::fs::create_dir_all(d)?;
    }
    let mut near = Core::start(&near_dir, &certs)?;
    let far = Core::start(&far_dir, &certs)?;
    let proxy = UdpDelayProxy::start(far.quic, ONE_WAY)?;
    let (near_ep, far_ep) = (near.quic.to_string(), proxy.listen.to_string());
    // The far core first: configuration order alone would choose it.
    let agent = Agent::start(
        &agent_dir,
        &certs,
        proxy.listen,
        &["--core", &near_ep, "--batch-max-delay-ms", "50"],
    )?;

    let (near_rtt, far_rtt) = wait_for("both cores measured", Duration::from_secs(30), || {
        let (n, f) = (
            gauge(&agent, "updraft_edge_uplink_rtt_seconds", &near_ep),
            gauge(&agent, "updraft_edge_uplink_rtt_seconds", &far_ep),
        );
        (n.is_finite() && f.is_finite()).then_some((n, f))
    })?;
    eprintln!(
        "measured rtt: near {:.3} ms, far {:.3} ms",
        near_rtt * 1e3,
        far_rtt * 1e3
    );
    assert!(
        far_rtt >= 2.0 * ONE_WAY.as_secs_f64() * 0.9,
        "the far core's rtt includes the proxy's delay: {far_rtt}"
    );
    assert!(near_rtt < far_rtt);
    wait_for("the near core active", Duration::from_secs(30), || {
        (gauge(&agent, "updraft_edge_uplink_active", &near_ep) == 1.0
            && gauge(&agent, "updraft_edge_uplink_active", &far_ep) == 0.0)
            .then_some(())
    })?;

    let mut publisher = LinePublisher::start(
        agent.mqtt_port,
        "site1/dev1/rtt",
        work.path().join("pub.log"),
    )?;
    publish(&mut publisher, 0..200, Duration::from_millis(2))?;
    wait_for(
        "the first 200 acknowledged",
        Duration::from_secs(30),
        || (agent.metric("updraft_edge_samples_acked_total") >= 200.0).then_some(()),
    )?;
    assert_eq!(stored(&near, 200)?.len(), 200, "the near core has them");
    assert!(stored(&far, 200)?.is_empty(), "the far core got nothing");

    // Kill the near core while samples keep coming.
    near.process.kill9();
    let killed = Instant::now();
    // Publishing goes on meanwhile; the switch is timed by polling the gauge between lines.
    let mut switched = None;
    for i in 200..500 {
        publisher.send(&format!(r#"{{"ts":{},"v":{i}}}"#, T0_MS + i * 1000))?;
        std::thread::sleep(Duration::from_millis(20));
        if switched.is_none() && gauge(&agent, "updraft_edge_uplink_active", &far_ep) == 1.0 {
            switched = Some(killed.elapsed());
        }
    }
    wait_for("the far core active", Duration::from_secs(30), || {
        (gauge(&agent, "updraft_edge_uplink_active", &far_ep) == 1.0).then_some(())
    })?;
    eprintln!(
        "failed over {:?} after the kill",
        switched.unwrap_or_else(|| killed.elapsed())
    );
    publish(&mut publisher, 500..600, Duration::from_millis(5))?;
    publisher.finish(Duration::from_secs(30))?;
    let total = 600;
    wait_for("every sample acknowledged", Duration::from_secs(60), || {
        (agent.metric("updraft_edge_samples_acked_total") >= total as f64).then_some(())
    })?;
    assert!(
        !stored(&far, total)?.is_empty(),
        "the far core took over after the kill"
    );

    // The near core comes back: the agent measures it again and returns to it.
    near = near.restart_after_kill9()?;
    let back = Instant::now();
    wait_for(
        "the near core active again",
        Duration::from_secs(60),
        || (gauge(&agent, "updraft_edge_uplink_active", &near_ep) == 1.0).then_some(()),
    )?;
    eprintln!(
        "back on the near core {:?} after its restart",
        back.elapsed()
    );

    let mut all = stored(&near, total)?;
    all.extend(stored(&far, total)?);
    let expected: BTreeMap<i64, f64> = (0..total).map(|i| (T0_MS + i * 1000, i as f64)).collect();
    let missing: Vec<&i64> = expected.keys().filter(|t| !all.contains_key(t)).collect();
    assert!(missing.is_empty(), "samples lost: {missing:?}");
    assert_eq!(all, expected, "every sample, with its own value");
    assert_eq!(
        agent.metric("updraft_edge_samples_dropped_total"),
        0.0,
        "nothing counted as dropped"
    );
    Ok(())
}

//! The agent's MQTT listeners with a users file and with TLS, against the real `mosquitto_pub`:
//! a wrong or missing login is refused (the client exits non-zero) and counted, the right one
//! is stored; over TLS, a client trusting the listener's CA publishes, and plain TCP or a
//! client trusting another CA gets nowhere.

use anyhow::Context;
use std::path::Path;
use std::time::Duration;
use updraft_tests::*;

/// Waits until the core answers `promql` with one sample of value `want`.
fn wait_stored(core: &Core, promql: &str, want: f64) -> anyhow::Result<()> {
    wait_for(promql, Duration::from_secs(30), || {
        let answer = core.query(promql, None).ok()?;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()?;
        (value == want).then_some(())
    })
}

/// Publishes expecting a refusal; returns the client's output. A client that could not run
/// is an error, not a refusal.
fn refused(port: u16, topic: &str, extra: &[&str]) -> anyhow::Result<String> {
    mosquitto_pub_refused(port, topic, extra)
}

#[test]
fn wrong_logins_are_refused_and_counted_right_ones_are_stored() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let users = work.path().join("mqtt-users");
    std::fs::write(&users, "# devices\nalice:s3cret\nbob:other:colon\n")?;
    let users = users.to_string_lossy().into_owned();
    let agent = Agent::start(
        work.path(),
        &certs,
        core.quic,
        &["--mqtt-users-file", &users],
    )?;
    assert_eq!(agent.metric("updraft_edge_mqtt_auth_failures_total"), 0.0);

    let port = agent.mqtt_port;
    refused(port, "s/d/auth_a", &["-u", "alice", "-P", "wrong"])?;
    refused(port, "s/d/auth_a", &[]).context("no login at all")?;
    refused(port, "s/d/auth_a", &["-u", "mallory", "-P", "s3cret"])?;
    // MQTT 5 (the other listener, and the other codec) refuses the same way.
    let v5 = ["-V", "mqttv5", "-u", "alice", "-P", "wrong"];
    refused(agent.mqtt5_port, "s/d/auth_a", &v5)?;
    wait_for("4 refusals counted", Duration::from_secs(10), || {
        (agent.metric("updraft_edge_mqtt_auth_failures_total") == 4.0).then_some(())
    })?;
    assert_eq!(
        agent.metric("updraft_edge_messages_received_total"),
        0.0,
        "nothing from a refused client was taken"
    );

    mosquitto_pub(
        port,
        "s/d/auth_a",
        b"21.5",
        &["-u", "alice", "-P", "s3cret"],
    )?;
    // A password may contain the separator: only the first colon splits.
    let bob = ["-V", "mqttv5", "-u", "bob", "-P", "other:colon"];
    mosquitto_pub(agent.mqtt5_port, "s/d/auth_b", b"7", &bob)?;
    wait_stored(&core, "auth_a", 21.5)?;
    wait_stored(&core, "auth_b", 7.0)?;
    assert_eq!(agent.metric("updraft_edge_mqtt_auth_failures_total"), 4.0);
    Ok(())
}

#[test]
fn tls_listener_takes_verified_clients_and_refuses_plain_tcp() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    // The listener's certificate comes from a CA of its own (any server certificate for
    // 127.0.0.1 would do): devices trust that CA, not the uplink's.
    let mqtt_certs = work.path().join("mqtt-certs");
    make_certs(&mqtt_certs)?;
    let other_ca = work.path().join("other-ca");
    make_certs(&other_ca)?;
    let core = Core::start(work.path(), &certs)?;
    let path = |dir: &Path, f: &str| dir.join(f).to_string_lossy().into_owned();
    let (cert, key) = (
        path(&mqtt_certs, "core.pem"),
        path(&mqtt_certs, "core-key.pem"),
    );
    let agent = Agent::start(
        work.path(),
        &certs,
        core.quic,
        &["--mqtt-tls-cert", &cert, "--mqtt-tls-key", &key],
    )?;

    let cafile = path(&mqtt_certs, "ca.pem");
    mosquitto_pub(
        agent.mqtt_port,
        "s/d/tls_a",
        b"3.25",
        &["--cafile", &cafile],
    )?;
    let v5 = ["--cafile", cafile.as_str(), "-V", "mqttv5"];
    mosquitto_pub(agent.mqtt5_port, "s/d/tls_b", b"4", &v5)?;
    wait_stored(&core, "tls_a", 3.25)?;
    wait_stored(&core, "tls_b", 4.0)?;

    refused(agent.mqtt_port, "s/d/tls_plain", &[]).context("plain TCP to the TLS port")?;
    let wrong_ca = path(&other_ca, "ca.pem");
    refused(agent.mqtt_port, "s/d/tls_plain", &["--cafile", &wrong_ca])
        .context("a listener certificate from a CA the client does not trust")?;
    assert_eq!(
        agent.metric("updraft_edge_messages_received_total"),
        2.0,
        "only the two TLS publishes arrived"
    );
    Ok(())
}

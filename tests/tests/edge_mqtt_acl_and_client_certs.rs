//! The agent's MQTT listeners with hashed passwords, topic ACLs and device client
//! certificates, against the real `edge-agent passwd` and `mosquitto_pub`: a wrong password
//! against a hashed entry is refused, an ACL-violating publish is acknowledged but dropped
//! and counted while allowed ones arrive, and a listener that requires client certificates
//! refuses a device without one (or with one from another CA) and takes one with.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use updraft_tests::*;

fn wait_stored(core: &Core, metric: &str) -> anyhow::Result<()> {
    wait_for(metric, Duration::from_secs(30), || {
        (core.series_count(metric).ok()? == 1).then_some(())
    })
}

/// `edge-agent passwd --file <file> <user>` with the password on stdin.
fn passwd(file: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    let mut child = Command::new(binary("edge-agent"))
        .arg("passwd")
        .arg("--file")
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}")?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "edge-agent passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn hashed_passwords_and_topic_acls_drop_and_count_what_is_not_allowed() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let users = work.path().join("mqtt-users");
    passwd(&users, "alice", "s3cret")?;
    passwd(&users, "bob", "hunter2")?;
    let text = std::fs::read_to_string(&users)?;
    assert!(text.contains("alice:$argon2id$"), "{text}");
    assert!(!text.contains("s3cret") && !text.contains("hunter2"));
    let acl = work.path().join("mqtt-acl");
    std::fs::write(
        &acl,
        "# every device: its own subtree\n\
         pattern write own/%u/#\n\
         user alice\n\
         topic write site1/%c/#\n",
    )?;
    let (users, acl) = (
        users.to_string_lossy().into_owned(),
        acl.to_string_lossy().into_owned(),
    );
    let agent = Agent::start(
        work.path(),
        &certs,
        core.quic,
        &["--mqtt-users-file", &users, "--mqtt-acl-file", &acl],
    )?;
    let denied = |agent: &Agent| agent.metric("updraft_edge_mqtt_acl_denied_total");
    assert_eq!(denied(&agent), 0.0);

    // A wrong password against a hashed entry is refused, on both listeners.
    let wrong = ["-u", "alice", "-P", "s3creT", "-i", "dev7"];
    mosquitto_pub_refused(agent.mqtt_port, "site1/dev7/acl_wrong", &wrong)?;
    let wrong5 = ["-V", "mqttv5", "-u", "bob", "-P", "hunter3"];
    mosquitto_pub_refused(agent.mqtt5_port, "own/bob/acl_wrong", &wrong5)?;

    // Denied first: QoS 1 over MQTT 3.1.1 still gets its PUBACK (the client succeeds).
    let alice = ["-u", "alice", "-P", "s3cret", "-i", "dev7"];
    mosquitto_pub(agent.mqtt_port, "site1/dev8/acl_other_device", b"1", &alice)?;
    mosquitto_pub(agent.mqtt_port, "own/bob/acl_other_user", b"1", &alice)?;
    // MQTT 5 answers 0x87 Not authorized; whatever the client makes of it, nothing is taken.
    let bob5 = ["-V", "mqttv5", "-u", "bob", "-P", "hunter2", "-i", "dev7"];
    let _ = mosquitto_pub(agent.mqtt5_port, "site1/dev7/acl_not_bobs", b"1", &bob5);
    wait_for("3 denials counted", Duration::from_secs(10), || {
        (denied(&agent) == 3.0).then_some(())
    })?;

    // Allowed: %c and %u substituted, on both listeners.
    mosquitto_pub(agent.mqtt_port, "site1/dev7/acl_by_client", b"2", &alice)?;
    mosquitto_pub(agent.mqtt_port, "own/alice/acl_by_user", b"3", &alice)?;
    mosquitto_pub(agent.mqtt5_port, "own/bob/acl_bob", b"4", &bob5)?;
    for metric in ["acl_by_client", "acl_by_user", "acl_bob"] {
        wait_stored(&core, metric)?;
    }
    for metric in [
        "acl_wrong",
        "acl_other_device",
        "acl_other_user",
        "acl_not_bobs",
    ] {
        assert_eq!(core.series_count(metric)?, 0, "{metric} was stored");
    }
    assert_eq!(denied(&agent), 3.0);
    assert_eq!(agent.metric("updraft_edge_mqtt_auth_failures_total"), 2.0);
    assert_eq!(agent.metric("updraft_edge_messages_received_total"), 3.0);
    Ok(())
}

#[test]
fn a_listener_requiring_client_certificates_takes_only_devices_with_one() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let path = |dir: &Path, f: &str| dir.join(f).to_string_lossy().into_owned();
    // The listener's server certificate, from a CA of its own.
    let listener = work.path().join("listener");
    make_certs(&listener)?;
    // The device CA: its `agent` certificate is a client certificate with CN dev9.
    let devices = work.path().join("devices");
    let other = work.path().join("other");
    for (dir, id) in [(&devices, "dev9"), (&other, "dev9")] {
        let out = Command::new(binary("core-node"))
            .args(["certs", "--agent-id", id, "--dir"])
            .arg(dir)
            .output()?;
        anyhow::ensure!(out.status.success(), "core-node certs failed");
    }
    let acl = work.path().join("mqtt-acl");
    std::fs::write(&acl, "user dev9\ntopic write plant/dev9/#\n")?;
    let core = Core::start(work.path(), &certs)?;
    let (cert, key, ca, acl) = (
        path(&listener, "core.pem"),
        path(&listener, "core-key.pem"),
        path(&devices, "ca.pem"),
        acl.to_string_lossy().into_owned(),
    );
    let agent = Agent::start(
        work.path(),
        &certs,
        core.quic,
        &[
            "--mqtt-tls-cert",
            &cert,
            "--mqtt-tls-key",
            &key,
            "--mqtt-tls-client-ca",
            &ca,
            "--mqtt-tls-client-cert-as-username",
            "--mqtt-acl-file",
            &acl,
        ],
    )?;
    let cafile = path(&listener, "ca.pem");
    let (dev_cert, dev_key) = (path(&devices, "agent.pem"), path(&devices, "agent-key.pem"));
    let with_cert = [
        "--cafile",
        cafile.as_str(),
        "--cert",
        dev_cert.as_str(),
        "--key",
        dev_key.as_str(),
    ];

    // No client certificate, or one from another CA: refused at the TLS handshake.
    let no_cert = ["--cafile", cafile.as_str()];
    mosquitto_pub_refused(agent.mqtt_port, "plant/dev9/cert_none", &no_cert)?;
    let (o_cert, o_key) = (path(&other, "agent.pem"), path(&other, "agent-key.pem"));
    let foreign = [
        "--cafile",
        cafile.as_str(),
        "--cert",
        o_cert.as_str(),
        "--key",
        o_key.as_str(),
    ];
    mosquitto_pub_refused(agent.mqtt_port, "plant/dev9/cert_foreign", &foreign)?;

    // With the device's certificate: its CN (dev9) is the username the ACL knows.
    mosquitto_pub(agent.mqtt_port, "plant/dev9/cert_ok", b"5", &with_cert)?;
    let mut v5 = with_cert.to_vec();
    v5.extend(["-V", "mqttv5"]);
    mosquitto_pub(agent.mqtt5_port, "plant/dev9/cert_ok_v5", b"6", &v5)?;
    mosquitto_pub(agent.mqtt_port, "plant/dev8/cert_denied", b"7", &with_cert)?;
    wait_stored(&core, "cert_ok")?;
    wait_stored(&core, "cert_ok_v5")?;
    assert_eq!(agent.metric("updraft_edge_mqtt_acl_denied_total"), 1.0);
    for metric in ["cert_none", "cert_foreign", "cert_denied"] {
        assert_eq!(core.series_count(metric)?, 0, "{metric} was stored");
    }
    assert_eq!(agent.metric("updraft_edge_messages_received_total"), 2.0);
    Ok(())
}

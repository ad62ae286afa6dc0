//! The core's QUIC listener takes a new certificate, key and client CA without a restart:
//! a running core is switched to another CA's files by replacing them on disk; an agent
//! trusting only the new CA, refused before, then delivers, and an agent connected before
//! the switch keeps delivering over its open connection. A broken replacement is logged and
//! counted, and the configuration in service stays.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use updraft_tests::*;

/// `core-node certs --dir <dir> --agent-id <id>`: a CA of its own unless `dir` holds one.
fn certs_for(dir: &Path, agent_id: &str) -> anyhow::Result<()> {
    let out = Command::new(binary("core-node"))
        .args(["certs", "--agent-id", agent_id, "--dir"])
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "core-node certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn wait_stored(core: &Core, metric: &str) -> anyhow::Result<()> {
    wait_for(metric, Duration::from_secs(60), || {
        (core.series_count(metric).ok()? == 1).then_some(())
    })
}

fn quic_reloads(core: &Core, result: &str) -> f64 {
    metric_sum(
        &core.metrics(),
        "updraft_core_tls_reloads_total",
        Some(&format!("listener=\"quic\",result=\"{result}\"")),
    )
}

/// An edge agent in `<work>/<name>` with `certs`' CA, agent certificate and key, running as
/// `agent_id` (each agent its own id, as in a real fleet).
fn agent_in(
    work: &Path,
    name: &str,
    certs: &Path,
    agent_id: &str,
    core: &Core,
) -> anyhow::Result<Agent> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    if agent_id == "test-agent" {
        return Agent::start(&dir, certs, core.quic, &[]);
    }
    let (mqtt_port, mqtt5_port) = (free_tcp_port(), free_tcp_port());
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let data_dir = dir.join("agent-data");
    let mut cmd = Command::new(binary("edge-agent"));
    cmd.args(["--agent-id", agent_id])
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
        .args(["--mqtt5-listen", &format!("127.0.0.1:{mqtt5_port}")])
        .args(["--http-listen", &http.to_string()])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--core", &core.quic.to_string()])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("agent.pem"))
        .arg("--key")
        .arg(certs.join("agent-key.pem"));
    let process = Process::spawn("edge-agent", cmd, dir.join("agent.log"))?;
    let url = format!("http://{http}/health");
    wait_for("edge-agent /health", Duration::from_secs(30), || {
        matches!(http_get(&url), Ok((200, _))).then_some(())
    })?;
    Ok(Agent {
        process,
        mqtt_port,
        mqtt5_port,
        http,
        data_dir,
    })
}

#[test]
fn the_quic_listener_switches_to_another_ca_without_a_restart() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let other = work.path().join("other");
    certs_for(&other, "new-agent")?;
    // One more agent certificate from the other CA, for a third agent.
    let late_certs = work.path().join("late-certs");
    std::fs::create_dir_all(&late_certs)?;
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(other.join(f), late_certs.join(f))?;
    }
    certs_for(&late_certs, "late-agent")?;
    let core = Core::start(work.path(), &certs)?;
    let pid = core.process.pid();

    // Before: the old CA's agent delivers, the new CA's agent cannot connect.
    let old_agent = agent_in(work.path(), "old", &certs, "test-agent", &core)?;
    old_agent.publish("s/d/before_switch", b"1")?;
    wait_stored(&core, "before_switch")?;
    let new_agent = agent_in(work.path(), "new", &other, "new-agent", &core)?;
    new_agent.publish("s/d/new_ca", b"2")?;
    wait_for(
        "the new CA's agent refused",
        Duration::from_secs(30),
        || {
            // Exported from its first event on: absent means not yet.
            let failures = metric_sum_if_present(
                &core.metrics(),
                "updraft_core_quic_handshake_failures_total",
                None,
            )?;
            (failures >= 1.0).then_some(())
        },
    )?;
    assert_eq!(core.series_count("new_ca")?, 0);
    assert_eq!(quic_reloads(&core, "ok"), 0.0);

    // The switch: the other CA's CA, key and certificate replace the files the core reads.
    for f in ["ca.pem", "core-key.pem", "core.pem"] {
        std::fs::copy(other.join(f), certs.join(f))?;
    }
    wait_stored(&core, "new_ca")?;
    assert!(quic_reloads(&core, "ok") >= 1.0);
    assert!(
        core.process
            .log_text()
            .contains("QUIC TLS certificate reloaded")
    );
    assert_eq!(core.process.pid(), pid, "the same process");

    // The connection opened before the switch carries on.
    old_agent.publish("s/d/after_switch", b"3")?;
    wait_stored(&core, "after_switch")?;

    // A broken replacement: logged, counted, and the configuration in service stays.
    std::fs::write(
        certs.join("core.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )?;
    wait_for("a failed reload counted", Duration::from_secs(30), || {
        (quic_reloads(&core, "failed") >= 1.0).then_some(())
    })?;
    assert!(
        core.process
            .log_text()
            .contains("QUIC TLS certificate reload failed; still serving the previous one")
    );
    let late_agent = agent_in(work.path(), "late", &late_certs, "late-agent", &core)?;
    late_agent.publish("s/d/after_broken_file", b"4")?;
    wait_stored(&core, "after_broken_file")?;
    Ok(())
}

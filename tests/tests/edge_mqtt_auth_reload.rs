//! The agent re-reads its MQTT users file and ACL file while it runs, against the real
//! `edge-agent passwd` and `mosquitto_pub`: after a password change the new password logs in
//! and the old one is refused, a removed user is refused, an ACL change lets an already open
//! connection publish where it could not before, a broken ACL file keeps the previous ACLs,
//! and SIGHUP re-reads both files even when unchanged. No restart anywhere: the agent's pid
//! stays the same throughout.

use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use updraft_tests::*;

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

/// Replaces `path` atomically with `text` (as an operator's tooling would).
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `updraft_edge_mqtt_auth_file_reloads_total{file, result}`; panics when the agent does not
/// export that series (it registers both results at 0 for each configured file).
fn reloads(agent: &Agent, file: &str, result: &str) -> f64 {
    let (f, r) = (format!("file=\"{file}\""), format!("result=\"{result}\""));
    let text = agent.metrics();
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("updraft_edge_mqtt_auth_file_reloads_total{"))
        .filter(|l| l.contains(&f) && l.contains(&r))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .collect();
    assert!(
        !values.is_empty(),
        "no updraft_edge_mqtt_auth_file_reloads_total{{{f},{r}}} in the scrape:\n{text}"
    );
    values.iter().sum()
}

fn wait_reloads(agent: &Agent, file: &str, result: &str, at_least: f64) -> anyhow::Result<()> {
    wait_for(
        &format!("{file} reload {result} #{at_least}"),
        Duration::from_secs(30),
        || (reloads(agent, file, result) >= at_least).then_some(()),
    )
}

fn wait_value(core: &Core, metric: &str, want: f64) -> anyhow::Result<()> {
    wait_for(metric, Duration::from_secs(30), || {
        (core.instant_value(metric, None).ok()? == Some(want)).then_some(())
    })
}

/// A long-lived logged-in `mosquitto_pub -l` (QoS 1): each line is one publish on `topic`,
/// all over one connection.
struct LiveConnection {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl LiveConnection {
    fn start(port: u16, topic: &str, user: &str, password: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-u", user, "-P", password, "-i", "live-dev"])
            .args(["-t", topic, "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn users_and_acl_files_are_reloaded_without_a_restart() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let users = work.path().join("mqtt-users");
    passwd(&users, "alice", "first-pw")?;
    passwd(&users, "bob", "bobs-pw")?;
    let acl = work.path().join("mqtt-acl");
    replace(
        &acl,
        "user alice\ntopic write allowed/#\nuser bob\ntopic write allowed/#\n",
    )?;
    let (users_arg, acl_arg) = (
        users.to_string_lossy().into_owned(),
        acl.to_string_lossy().into_owned(),
    );
    let mut agent = Agent::start(
        work.path(),
        &certs,
        core.quic,
        &["--mqtt-users-file", &users_arg, "--mqtt-acl-file", &acl_arg],
    )?;
    let pid = agent.process.pid();
    let port = agent.mqtt_port;
    let login = |user: &'static str, pw: &'static str| ["-u", user, "-P", pw, "-i", "dev1"];
    let denied = |agent: &Agent| agent.metric("updraft_edge_mqtt_acl_denied_total");

    mosquitto_pub(
        port,
        "allowed/dev1/reload_first",
        b"1",
        &login("alice", "first-pw"),
    )?;
    wait_value(&core, "reload_first", 1.0)?;

    // A connection opened under the first ACL: its publish outside `allowed/` is dropped.
    let mut live = LiveConnection::start(port, "later/dev1/reload_live", "alice", "first-pw")?;
    live.send("1")?;
    wait_for("the live denial", Duration::from_secs(30), || {
        (denied(&agent) == 1.0).then_some(())
    })?;

    // A new password, written while the agent runs: the new one in, the old one out.
    assert_eq!(reloads(&agent, "users", "ok"), 0.0);
    passwd(&users, "alice", "second-pw")?;
    wait_reloads(&agent, "users", "ok", 1.0)?;
    mosquitto_pub(
        port,
        "allowed/dev1/reload_second",
        b"2",
        &login("alice", "second-pw"),
    )?;
    wait_value(&core, "reload_second", 2.0)?;
    let failures = agent.metric("updraft_edge_mqtt_auth_failures_total");
    mosquitto_pub_refused(
        port,
        "allowed/dev1/reload_old_pw",
        &login("alice", "first-pw"),
    )
    .context("the old password")?;
    assert_eq!(
        agent.metric("updraft_edge_mqtt_auth_failures_total"),
        failures + 1.0
    );

    // A user removed from the file is refused on the next connect.
    mosquitto_pub(
        port,
        "allowed/dev1/reload_bob",
        b"4",
        &login("bob", "bobs-pw"),
    )?;
    let text = std::fs::read_to_string(&users)?;
    let without_bob: String = text
        .lines()
        .filter(|l| !l.starts_with("bob:"))
        .map(|l| format!("{l}\n"))
        .collect();
    replace(&users, &without_bob)?;
    wait_reloads(&agent, "users", "ok", 2.0)?;
    mosquitto_pub_refused(port, "allowed/dev1/reload_bob", &login("bob", "bobs-pw"))
        .context("a removed user")?;

    // A new ACL: the connection opened before it may now publish under `later/`.
    replace(
        &acl,
        "user alice\ntopic write allowed/#\ntopic write later/#\n",
    )?;
    wait_reloads(&agent, "acl", "ok", 1.0)?;
    assert!(live.running(), "the live connection was closed");
    live.send("2")?;
    wait_value(&core, "reload_live", 2.0)?;
    assert_eq!(denied(&agent), 1.0);

    // A broken ACL file is refused, counted, and the previous ACLs stay in service.
    replace(
        &acl,
        "user alice\ntopic write allowed/#\nthis is not an ACL line\n",
    )?;
    wait_reloads(&agent, "acl", "failed", 1.0)?;
    live.send("3")?;
    wait_value(&core, "reload_live", 3.0)?;
    mosquitto_pub(
        port,
        "elsewhere/dev1/reload_never",
        b"6",
        &login("alice", "second-pw"),
    )?;
    wait_for(
        "the denial under the kept ACLs",
        Duration::from_secs(30),
        || (denied(&agent) == 2.0).then_some(()),
    )?;

    // SIGHUP re-reads both files although neither changed since: users ok, acl failed again.
    let (users_ok, acl_failed) = (
        reloads(&agent, "users", "ok"),
        reloads(&agent, "acl", "failed"),
    );
    signal(pid, "HUP")?;
    wait_reloads(&agent, "users", "ok", users_ok + 1.0)?;
    wait_reloads(&agent, "acl", "failed", acl_failed + 1.0)?;
    assert!(agent.process.is_running(), "SIGHUP stopped the agent");
    assert_eq!(agent.process.pid(), pid);

    for metric in ["reload_old_pw", "reload_never"] {
        assert_eq!(
            core.instant_value(metric, None)?,
            None,
            "{metric} was stored"
        );
    }
    wait_value(&core, "reload_bob", 4.0)?;
    Ok(())
}

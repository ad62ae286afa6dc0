//! Master-key re-wrapping across processes (issue 8): a real core node and edge agent, both
//! encrypted at rest, store samples; `core-node keys rewrap` and `edge-agent keys rewrap`
//! refuse while the processes run; once they are stopped, both re-wrap their data keys under
//! new master keys. Started with the old keys, both refuse with "wrong master key" (the core
//! with exit status 2); started with the new keys, the core answers the same data and the
//! agent delivers a sample it had buffered (sealed) before the re-wrap.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use updraft_tests::*;

struct Setup {
    work: PathBuf,
    certs: PathBuf,
    http: u16,
    quic: u16,
    mqtt: u16,
    agent_http: u16,
}

impl Setup {
    fn core(&self, key: &Path) -> Command {
        let mut cmd = Command::new(binary("core-node"));
        cmd.arg("--data-dir")
            .arg(self.work.join("core-data"))
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http)])
            .args(["--quic-listen", &format!("127.0.0.1:{}", self.quic)])
            .arg("--ca")
            .arg(self.certs.join("ca.pem"))
            .arg("--cert")
            .arg(self.certs.join("core.pem"))
            .arg("--key")
            .arg(self.certs.join("core-key.pem"))
            .arg("--insecure-dev-mode")
            .arg("--master-key-file")
            .arg(key)
            .env_remove("UPDRAFT_MASTER_KEY");
        cmd
    }

    fn agent(&self, key: &Path) -> Command {
        let mut cmd = Command::new(binary("edge-agent"));
        cmd.args(["--agent-id", "test-agent"])
            .args(["--mqtt-listen", &format!("127.0.0.1:{}", self.mqtt)])
            .args(["--mqtt5-listen", &format!("127.0.0.1:{}", free_tcp_port())])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.agent_http)])
            .arg("--data-dir")
            .arg(self.work.join("agent-data"))
            .args(["--core", &format!("127.0.0.1:{}", self.quic)])
            .arg("--ca")
            .arg(self.certs.join("ca.pem"))
            .arg("--cert")
            .arg(self.certs.join("agent.pem"))
            .arg("--key")
            .arg(self.certs.join("agent-key.pem"))
            .arg("--master-key-file")
            .arg(key)
            .env_remove("UPDRAFT_MASTER_KEY");
        cmd
    }

    fn start_core(&self, key: &Path, log: &str) -> anyhow::Result<Process> {
        let p = Process::spawn("core-node", self.core(key), self.work.join(log))?;
        let url = format!("http://127.0.0.1:{}/health", self.http);
        wait_for("core /health", Duration::from_secs(30), || {
            matches!(http_get(&url), Ok((200, _))).then_some(())
        })?;
        Ok(p)
    }

    fn start_agent(&self, key: &Path, log: &str) -> anyhow::Result<Process> {
        let p = Process::spawn("edge-agent", self.agent(key), self.work.join(log))?;
        let url = format!("http://127.0.0.1:{}/health", self.agent_http);
        wait_for("agent /health", Duration::from_secs(30), || {
            matches!(http_get(&url), Ok((200, _))).then_some(())
        })?;
        Ok(p)
    }

    /// The value of `metric` on the core now, if it has one series.
    fn value(&self, metric: &str) -> Option<f64> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.http,
            encode(metric)
        );
        let answer = get_json(&url).ok()?;
        let result = answer["data"]["result"].as_array()?;
        (result.len() == 1)
            .then(|| result[0]["value"][1].as_str()?.parse().ok())
            .flatten()
    }
}

/// SIGTERM and wait for the exit, as an operator stops a service.
fn stop(p: &mut Process) -> anyhow::Result<()> {
    signal(p.pid(), "TERM")?;
    wait_for("process exit", Duration::from_secs(30), || {
        (!p.is_running()).then_some(())
    })
}

/// Runs `cmd` to its end (killed after 60 s, which fails the test).
fn run(mut cmd: Command) -> anyhow::Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = signal(id, "KILL");
            anyhow::bail!("{cmd:?} did not exit within 60 s")
        }
    }
}

fn keys_init(out: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new(binary("core-node"));
    cmd.args(["keys", "init", "--out"]).arg(out);
    let o = run(cmd)?;
    anyhow::ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Ok(())
}

fn core_rewrap(s: &Setup, old: &Path, new: &Path) -> anyhow::Result<Output> {
    let mut cmd = Command::new(binary("core-node"));
    cmd.args(["keys", "rewrap", "--data-dir"])
        .arg(s.work.join("core-data"))
        .arg("--master-key-file")
        .arg(old)
        .arg("--new-master-key-file")
        .arg(new)
        .env_remove("UPDRAFT_MASTER_KEY");
    run(cmd)
}

fn agent_rewrap(s: &Setup, old: &Path, new: &Path) -> anyhow::Result<Output> {
    let mut cmd = Command::new(binary("edge-agent"));
    cmd.args(["keys", "rewrap", "--data-dir"])
        .arg(s.work.join("agent-data"))
        .arg("--master-key-file")
        .arg(old)
        .arg("--new-master-key-file")
        .arg(new)
        .env_remove("UPDRAFT_MASTER_KEY");
    run(cmd)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn rewrapped_stores_open_only_with_the_new_master_key_and_keep_their_data() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let s = Setup {
        work: work.path().to_owned(),
        certs,
        http: free_tcp_port(),
        quic: free_udp_port(),
        mqtt: free_tcp_port(),
        agent_http: free_tcp_port(),
    };
    let keys = work.path().join("keys");
    std::fs::create_dir(&keys)?;
    let (core_old, core_new) = (keys.join("core-old.key"), keys.join("core-new.key"));
    let (edge_old, edge_new) = (keys.join("edge-old.key"), keys.join("edge-new.key"));
    for k in [&core_old, &core_new, &edge_old, &edge_new] {
        keys_init(k)?;
    }

    let mut core = s.start_core(&core_old, "core-1.log")?;
    let mut agent = s.start_agent(&edge_old, "agent-1.log")?;
    mosquitto_pub(s.mqtt, "site1/dev1/rewrap_before", b"21.5", &[])?;
    wait_for("rewrap_before on the core", Duration::from_secs(30), || {
        (s.value("rewrap_before") == Some(21.5)).then_some(())
    })?;

    // Running processes hold their data directories: both commands refuse, nothing changes.
    let o = core_rewrap(&s, &core_old, &core_new)?;
    assert!(!o.status.success(), "rewrap under a running core");
    assert!(stderr(&o).contains("running"), "{}", stderr(&o));
    let o = agent_rewrap(&s, &edge_old, &edge_new)?;
    assert!(!o.status.success(), "rewrap under a running agent");
    assert!(stderr(&o).contains("running"), "{}", stderr(&o));

    // A sample the agent keeps sealed in its buffer while the core is down.
    stop(&mut core)?;
    mosquitto_pub(s.mqtt, "site1/dev1/rewrap_buffered", b"7.25", &[])?;
    stop(&mut agent)?;

    let o = core_rewrap(&s, &core_old, &core_new)?;
    assert!(o.status.success(), "core rewrap: {}", stderr(&o));
    let o = agent_rewrap(&s, &edge_old, &edge_new)?;
    assert!(o.status.success(), "agent rewrap: {}", stderr(&o));
    for dir in ["core-data", "agent-data/buffer"] {
        assert!(
            !work.path().join(dir).join("keyring.json.tmp").exists(),
            "{dir}: temporary keyring left behind"
        );
    }

    // The old master keys no longer open anything, and say so.
    let o = run(s.core(&core_old))?;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("wrong master key"), "{}", stderr(&o));
    let o = run(s.agent(&edge_old))?;
    assert!(!o.status.success(), "agent started with the old key");
    assert!(stderr(&o).contains("wrong master key"), "{}", stderr(&o));

    // The new ones open everything: the stored sample, and the buffered one gets delivered.
    let _core = s.start_core(&core_new, "core-2.log")?;
    assert_eq!(s.value("rewrap_before"), Some(21.5));
    let _agent = s.start_agent(&edge_new, "agent-2.log")?;
    wait_for(
        "the buffered sample on the core",
        Duration::from_secs(30),
        || (s.value("rewrap_buffered") == Some(7.25)).then_some(()),
    )?;
    mosquitto_pub(s.mqtt, "site1/dev1/rewrap_after", b"3", &[])?;
    wait_for("rewrap_after on the core", Duration::from_secs(30), || {
        (s.value("rewrap_after") == Some(3.0)).then_some(())
    })?;
    Ok(())
}

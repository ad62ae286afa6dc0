//! The network drops every packet to the core for a while, then recovers: no sample is lost
//! and every series reads back in order.
//!
//! The core runs in a network namespace the test creates, joined to the host by a veth pair;
//! an nftables rule in that namespace drops UDP to the core's QUIC port for
//! `UPDRAFT_TEST_DROP_SECS` seconds (default 10) while a device keeps publishing to the agent.
//! Needs root, iproute2 and nftables (`scripts/test.sh` installs them); without them the test
//! fails, naming what is missing (`UPDRAFT_ALLOW_SKIP=1` outside CI skips it instead, see
//! [`skip_or_fail`]).

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use updraft_tests::*;

const T0_MS: i64 = 1_700_000_000_000;
const QUIC_PORT: u16 = 4433;
const HTTP_PORT: u16 = 9201;
const TABLE: &str = "updraft_test";

fn drop_for() -> Duration {
    let secs = std::env::var("UPDRAFT_TEST_DROP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}

/// `/usr/sbin/<name>` when it exists (outside a normal user's PATH), else `name`.
fn sbin(name: &str) -> PathBuf {
    let path = Path::new("/usr/sbin").join(name);
    if path.exists() {
        path
    } else {
        PathBuf::from(name)
    }
}

/// Runs a command; its stderr is the error.
fn run(program: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace joined to the host by a veth pair: host side `.1`, namespace side `.2`
/// of a /30. Deleted when dropped (deleting one end of the pair deletes both).
struct Netns {
    name: String,
    host_veth: String,
    inside: std::net::Ipv4Addr,
}

impl Netns {
    /// When this machine cannot do it (not root, no `ip`, no `nft`, or the kernel refuses
    /// namespaces, veth pairs or nf_tables): an error naming why, or `Ok(None)` when
    /// [`skip_or_fail`] allows a skip.
    fn create() -> anyhow::Result<Option<Self>> {
        let uid = Command::new("id").arg("-u").output();
        let root = uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            skip_or_fail("needs root to create a network namespace")?;
            return Ok(None);
        }
        for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
            if Command::new(sbin(tool)).arg("--version").output().is_err() {
                skip_or_fail(&format!("`{tool}` not found (apt-get install {package})"))?;
                return Ok(None);
            }
        }
        // Names and subnet from the process id, so parallel runs do not collide.
        let id = std::process::id();
        let name = format!("updraft-test-{id}");
        let (host_veth, ns_veth) = (
            format!("upd{}h", id % 100_000),
            format!("upd{}n", id % 100_000),
        );
        let (a, b) = (((id / 64) % 250) as u8, ((id % 64) * 4) as u8);
        let host = std::net::Ipv4Addr::new(10, 213 + (a % 40), b, 1);
        let inside = std::net::Ipv4Addr::new(10, 213 + (a % 40), b, 2);
        let ip = sbin("ip");
        if let Err(e) = run(&ip, &["netns", "add", &name]) {
            skip_or_fail(&format!("cannot create a network namespace here: {e:#}"))?;
            return Ok(None);
        }
        let ns = Self {
            name,
            host_veth,
            inside,
        };
        let veth = [
            "link",
            "add",
            &ns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &ns_veth,
        ];
        if let Err(e) = run(&ip, &veth) {
            skip_or_fail(&format!("cannot create a veth pair here: {e:#}"))?;
            return Ok(None);
        }
        if let Err(e) = ns.exec(&sbin("nft"), &["list", "ruleset"]) {
            skip_or_fail(&format!("nftables does not work here: {e:#}"))?;
            return Ok(None);
        }
        run(&ip, &["link", "set", &ns_veth, "netns", &ns.name])?;
        run(
            &ip,
            &["addr", "add", &format!("{host}/30"), "dev", &ns.host_veth],
        )?;
        run(&ip, &["link", "set", &ns.host_veth, "up"])?;
        ns.exec(
            &ip,
            &["addr", "add", &format!("{inside}/30"), "dev", &ns_veth],
        )?;
        ns.exec(&ip, &["link", "set", &ns_veth, "up"])?;
        ns.exec(&ip, &["link", "set", "lo", "up"])?;
        Ok(Some(ns))
    }

    /// Runs `program args` inside the namespace.
    fn exec(&self, program: &Path, args: &[&str]) -> anyhow::Result<()> {
        let program = program.to_string_lossy();
        let mut all = vec!["netns", "exec", &self.name, &program];
        all.extend_from_slice(args);
        run(&sbin("ip"), &all)
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.inside, port))
    }

    /// Drops every UDP datagram to `port` arriving in the namespace.
    fn drop_udp_to(&self, port: u16) -> anyhow::Result<()> {
        let nft = sbin("nft");
        self.exec(&nft, &["add", "table", "inet", TABLE])?;
        self.exec(
            &nft,
            &[
                "add",
                "chain",
                "inet",
                TABLE,
                "input",
                "{ type filter hook input priority 0; policy accept; }",
            ],
        )?;
        self.exec(
            &nft,
            &[
                "add",
                "rule",
                "inet",
                TABLE,
                "input",
                "udp",
                "dport",
                &port.to_string(),
                "drop",
            ],
        )
    }

    fn stop_dropping(&self) -> anyhow::Result<()> {
        self.exec(&sbin("nft"), &["delete", "table", "inet", TABLE])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ip = sbin("ip");
        let _ = run(&ip, &["link", "del", &self.host_veth]);
        let _ = run(&ip, &["netns", "del", &self.name]);
    }
}

/// A core node inside `ns`, listening on the namespace's address. Killed when dropped.
fn start_core(ns: &Netns, work: &Path, certs: &Path) -> anyhow::Result<Process> {
    let mut cmd = Command::new(sbin("ip"));
    cmd.args(["netns", "exec", &ns.name])
        .arg(binary("core-node"))
        .arg("--data-dir")
        .arg(work.join("core-data"))
        .args(["--http-listen", &ns.addr(HTTP_PORT).to_string()])
        .args(["--quic-listen", &ns.addr(QUIC_PORT).to_string()])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("core.pem"))
        .arg("--key")
        .arg(certs.join("core-key.pem"))
        // Not a test of tokens: queries go without one.
        .arg("--insecure-dev-mode");
    let process = Process::spawn("core-node (in a netns)", cmd, work.join("core.log"))?;
    let url = format!("http://{}/health", ns.addr(HTTP_PORT));
    wait_for("core-node /health", Duration::from_secs(30), || {
        matches!(http_get(&url), Ok((200, _))).then_some(())
    })?;
    Ok(process)
}

#[test]
fn packets_to_the_core_dropped_for_a_while_lose_no_sample_and_keep_order() -> anyhow::Result<()> {
    let Some(ns) = Netns::create()? else {
        // Skipped, allowed and printed by `skip_or_fail`.
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    // The core's certificate must name the address the agent dials; the agent's must carry
    // the agent id `Agent::start` runs under (the core binds batches to it).
    let out = Command::new(binary("core-node"))
        .args(["certs", "--agent-id", "test-agent", "--dir"])
        .arg(&certs)
        .args(["--host", &ns.inside.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("core-node certs: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _core = start_core(&ns, work.path(), &certs)?;
    let agent = Agent::start(
        work.path(),
        &certs,
        ns.addr(QUIC_PORT),
        &["--batch-max-delay-ms", "50"],
    )?;
    let mut publisher = LinePublisher::start(
        agent.mqtt_port,
        "site1/dev1/net",
        work.path().join("pub.log"),
    )?;
    let mut next = 0i64;
    let mut publish_for = |publisher: &mut LinePublisher, d: Duration| -> anyhow::Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            // Two series per message: net_a counts up, net_b down.
            let line = format!(
                r#"{{"ts":{},"a":{next},"b":{}}}"#,
                T0_MS + next * 1000,
                -next
            );
            publisher.send(&line)?;
            next += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    };

    publish_for(&mut publisher, Duration::from_secs(2))?;
    wait_for("samples reaching the core", Duration::from_secs(30), || {
        (agent.metric("updraft_edge_samples_acked_total") > 0.0).then_some(())
    })?;
    let errors_before = agent.metric("updraft_edge_uplink_errors_total");
    ns.drop_udp_to(QUIC_PORT)?;
    let dropping = Instant::now();
    publish_for(&mut publisher, drop_for())?;
    // The cut was real: the agent noticed (its QUIC idle timeout is 5 s).
    wait_for("a failed delivery", Duration::from_secs(30), || {
        (agent.metric("updraft_edge_uplink_errors_total") > errors_before).then_some(())
    })?;
    let acked_during = agent.metric("updraft_edge_samples_acked_total");
    ns.stop_dropping()?;
    let restored = Instant::now();
    eprintln!("dropped UDP to the core for {:?}", dropping.elapsed());
    publish_for(&mut publisher, Duration::from_secs(2))?;
    publisher.finish(Duration::from_secs(30))?;
    let total = next;
    wait_for("every sample acknowledged", Duration::from_secs(90), || {
        (agent.metric("updraft_edge_samples_acked_total") >= 2.0 * total as f64).then_some(())
    })?;
    eprintln!(
        "{total} messages; {acked_during} samples acknowledged before the rule went; \
         all acknowledged {:?} after it went (2 s of publishing included)",
        restored.elapsed()
    );

    let at = (T0_MS + total * 1000) as f64 / 1000.0;
    let url = format!(
        "http://{}/api/v1/query?query={}&time={at}",
        ns.addr(HTTP_PORT),
        encode(&format!(r#"{{__name__=~"net_a|net_b"}}[{}s]"#, total + 10))
    );
    let series = matrix_series(&get_json(&url)?)?;
    let by_name: BTreeMap<String, Vec<(i64, f64)>> = series
        .into_iter()
        .map(|s| (s.labels["__name__"].clone(), s.points_ms))
        .collect();
    for (name, sign) in [("net_a", 1.0), ("net_b", -1.0)] {
        let expected: Vec<(i64, f64)> = (0..total)
            .map(|i| (T0_MS + i * 1000, sign * i as f64))
            .collect();
        let got = by_name
            .get(name)
            .cloned()
            .with_context(|| format!("{name}: no such series in the core"))?;
        let missing = expected.iter().filter(|p| !got.contains(p)).count();
        assert_eq!(missing, 0, "{name}: {missing} of {total} samples lost");
        // In time order, each value is the one published with that timestamp: order kept.
        assert_eq!(got, expected, "{name} reads back complete and in order");
    }
    assert_eq!(agent.metric("updraft_edge_samples_dropped_total"), 0.0);
    Ok(())
}

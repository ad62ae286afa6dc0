//! Three core-node processes in a cluster at replication factor 3, written to over line
//! protocol through every node while a random node is killed with SIGKILL and restarted, cycle
//! after cycle. At the end: every acknowledged sample is readable from every node, no sample
//! that was never sent exists, and every group's replicas hold identical data (the admin
//! API's per-group checksums at the same applied index).
//!
//! A second test runs the same three nodes at replication factor 1: each node holds only its
//! groups' part of the data, any node answers for all of it, and a query that needs a dead
//! node's group fails naming the shard range instead of answering without it.
//!
//! `UPDRAFT_CLUSTER_KILL_CYCLES` sets the number of kill cycles (default 20).

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use updraft_tests::*;

const SERIES: u64 = 6;
/// Timestamps of sample `i`: one second apart from a fixed start an hour ago, so that every
/// sample is inside the default lookback of a `[2h]` selector.
fn timestamp_ms(base_ms: i64, i: u64) -> i64 {
    base_ms + i as i64 * 1000
}

struct Node {
    core: Core,
    cluster: std::net::SocketAddr,
}

fn node_certs(certs: &Path) -> anyhow::Result<()> {
    let out = Command::new(binary("core-node"))
        .args([
            "certs",
            "--node-id",
            "1",
            "--node-id",
            "2",
            "--node-id",
            "3",
            "--dir",
        ])
        .arg(certs)
        .output()?;
    if !out.status.success() {
        bail!("core-node certs: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn start(work: &Path, certs: &Path, id: u64) -> anyhow::Result<Node> {
    let cluster = std::net::SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let dir = work.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir)?;
    let core = Core::start_with_args(
        &dir,
        certs,
        &[
            "--node-id",
            &id.to_string(),
            "--cluster-listen",
            &cluster.to_string(),
            "--min-free-disk-mib",
            "0",
        ],
    )?;
    Ok(Node { core, cluster })
}

/// Three development-mode nodes on fresh ports (certificates included), made a cluster at
/// replication factor `rf`; the directory they live in goes with them.
fn three_nodes(rf: usize) -> anyhow::Result<(tempfile::TempDir, BTreeMap<u64, Node>)> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    node_certs(&certs)?;
    let mut nodes: BTreeMap<u64, Node> = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(work.path(), &certs, id)?);
    }
    init(&nodes, rf)?;
    Ok((work, nodes))
}

/// `core-node cluster init` through node 1, with every node and `rf` replicas per group.
fn init(nodes: &BTreeMap<u64, Node>, rf: usize) -> anyhow::Result<()> {
    let init = Command::new(binary("core-node"))
        .args(["cluster", "--url", &nodes[&1].core.url(""), "init"])
        .args(["--replication-factor", &rf.to_string()])
        .args(nodes.iter().flat_map(|(id, n)| {
            [
                "--node".to_owned(),
                format!("{id}={},{}", n.cluster, n.core.http),
            ]
        }))
        .output()?;
    if !init.status.success() {
        bail!("cluster init: {}", String::from_utf8_lossy(&init.stderr));
    }
    Ok(())
}

/// POSTs line protocol with a timeout longer than the node's own proposal deadline.
fn post_lines(url: &str, body: &str) -> anyhow::Result<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    Ok(agent.post(url).send(body.as_bytes())?.status().as_u16())
}

/// What the writer sent and what was acknowledged, per sample index.
#[derive(Default)]
struct Ledger {
    sent: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    failed_writes: u64,
}

#[test]
fn a_three_node_cluster_loses_no_acknowledged_sample_through_kill9_cycles() -> anyhow::Result<()> {
    let cycles: usize = std::env::var("UPDRAFT_CLUSTER_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = rand::random();
    println!("seed {seed}, {cycles} cycles");
    let (_work, mut nodes) = three_nodes(3)?;

    // The writer: batches of 6 samples (one per series) to a node picked at random among the
    // HTTP addresses, the next batch only after an answer. A refused or failed batch is sent
    // again to another node until acknowledged (idempotent: the same samples).
    let urls: Vec<String> = nodes
        .values()
        .map(|n| n.core.url("/write?precision=ms"))
        .collect();
    let base_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64)
        - 3_600_000;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ledger, stop) = (Arc::clone(&ledger), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body: String = (0..SERIES)
                    .map(|s| format!("kt,s=s{s} v={i} {}\n", timestamp_ms(base_ms, i)))
                    .collect();
                ledger.lock().expect("lock").sent.insert(i);
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let url = &urls[rng.random_range(0..urls.len())];
                    match post_lines(url, &body) {
                        Ok(204) => {
                            ledger.lock().expect("lock").acked.insert(i);
                            break;
                        }
                        _ => ledger.lock().expect("lock").failed_writes += 1,
                    }
                    if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                i += 1;
            }
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    for cycle in 0..cycles {
        let victim = rng.random_range(1..=3u64);
        let acked_before = ledger.lock().expect("lock").acked.len();
        let node = nodes.remove(&victim).context("node")?;
        let Node { core, cluster } = node;
        // SIGKILL, then the same ports, data and flags.
        let core = core
            .restart_after_kill9()
            .with_context(|| format!("cycle {cycle}: restarting node {victim}"))?;
        nodes.insert(victim, Node { core, cluster });
        // The cluster takes writes again before the next kill: at least a few batches are
        // acknowledged (a wait on a condition, not a fixed time).
        wait_for(
            &format!("cycle {cycle}: writes acknowledged after restarting node {victim}"),
            Duration::from_secs(60),
            || (ledger.lock().expect("lock").acked.len() >= acked_before + 5).then_some(()),
        )?;
    }
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    let (sent, acked, failed) = {
        let l = ledger.lock().expect("lock");
        (l.sent.clone(), l.acked.clone(), l.failed_writes)
    };
    println!(
        "{} batches sent, {} acknowledged, {failed} attempts refused or failed",
        sent.len(),
        acked.len()
    );
    assert!(
        acked.len() > cycles * 5,
        "too few writes acknowledged to mean anything"
    );

    // Every node converges on every acknowledged sample and nothing unsent.
    let at = (base_ms as f64 + 3_600_000.0 * 2.0) / 1000.0;
    for (id, node) in &nodes {
        let mut last = String::new();
        let done = wait_for(
            &format!("node {id} holding every acknowledged sample"),
            Duration::from_secs(120),
            || {
                // Line protocol's measurement `kt` and field `v` make the metric `kt_v`.
                let series = match node.core.raw_samples("kt_v", "3h", at) {
                    Ok(s) => s,
                    Err(e) => {
                        last = format!("query failed: {e:#}");
                        return None;
                    }
                };
                let mut ok = series.len() == SERIES as usize;
                if !ok {
                    last = format!("{} series", series.len());
                }
                for s in &series {
                    let got: BTreeSet<u64> = s.points_ms.iter().map(|(_, v)| *v as u64).collect();
                    let missing = acked.difference(&got).count();
                    let phantom = got.difference(&sent).count();
                    assert_eq!(
                        phantom, 0,
                        "node {id}: {phantom} samples that were never sent"
                    );
                    if missing > 0 {
                        last = format!("{:?}: {missing} acknowledged samples missing", s.labels);
                        ok = false;
                    }
                }
                ok.then_some(())
            },
        );
        if let Err(e) = done {
            bail!("{e}: {last}");
        }
    }

    // Replicas of each group hold identical data once they applied the same log.
    let mut last = String::new();
    let agreed = wait_for(
        "every group's replicas agreeing on applied index and checksum",
        Duration::from_secs(60),
        || {
            let sums: Vec<serde_json::Value> = nodes
                .values()
                .map(|n| get_json(&n.core.url("/api/v1/admin/cluster/checksums")))
                .collect::<anyhow::Result<_>>()
                .ok()?;
            let mut per_group: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in &sums {
                for (group, sum) in s["data"]["groups"].as_object()? {
                    per_group
                        .entry(group.clone())
                        .or_default()
                        .insert(sum.to_string());
                }
            }
            last = format!("{per_group:?}");
            (per_group.len() == 4 && per_group.values().all(|v| v.len() == 1)).then_some(())
        },
    );
    if let Err(e) = agreed {
        bail!("{e}: {last}");
    }
    Ok(())
}

#[test]
fn at_replication_factor_1_data_is_partitioned_and_any_node_answers_for_all() -> anyhow::Result<()>
{
    let (_work, mut nodes) = three_nodes(1)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let body: String = (0..60)
        .map(|d| format!("pt,device=d{d} v={d} {now_ms}\n"))
        .collect();
    let url = nodes[&1].core.url("/write?precision=ms");
    wait_for("the write acknowledged", Duration::from_secs(60), || {
        matches!(post_lines(&url, &body), Ok(204)).then_some(())
    })?;
    for (id, node) in &nodes {
        let count = node.core.instant_value("count(pt_v)", None)?;
        let sum = node.core.instant_value("sum(pt_v)", None)?;
        assert_eq!(count, Some(60.0), "node {id} counts every series");
        assert_eq!(
            sum,
            Some((0..60).sum::<u32>() as f64),
            "node {id} sums every series"
        );
        let (status, values) = http_get(&node.core.url("/api/v1/label/device/values"))?;
        assert_eq!(status, 200, "{values}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&values)?["data"]
                .as_array()
                .map(Vec::len),
            Some(60)
        );
    }
    // Each node holds only its own groups' series.
    let mut held = 0;
    for (id, node) in &nodes {
        let sums = get_json(&node.core.url("/api/v1/admin/cluster/checksums"))?;
        let series: u64 = sums["data"]["groups"]
            .as_object()
            .context("groups")?
            .values()
            .map(|g| g["series"].as_u64().unwrap_or_default())
            .sum();
        assert!(
            series < 60,
            "node {id} holds {series} of 60 series: not partitioned"
        );
        held += series;
    }
    assert_eq!(held, 60, "every series is held by exactly one node");

    // Node 3 gone: its groups have no replica, so a query over every series fails and says
    // which shards it could not read.
    nodes.get_mut(&3).context("node 3")?.core.process.kill9();
    let (status, answer) = http_get(&nodes[&1].core.url("/api/v1/query?query=count(pt_v)"))?;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.contains("shards"),
        "the error names the shard range: {answer}"
    );
    // Asked for a partial answer, it counts what the others hold and says what is missing.
    let (status, answer) = http_get(
        &nodes[&1]
            .core
            .url("/api/v1/query?query=count(pt_v)&partial_response=true"),
    )?;
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer)?;
    let counted: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .context("a count")?
        .parse()?;
    assert!(counted > 0.0 && counted < 60.0, "{answer}");
    let warnings = v["warnings"].as_array().context("warnings")?;
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("shards"))),
        "a warning names the missing shards: {answer}"
    );
    Ok(())
}

#[test]
fn an_agent_writes_through_the_cluster_and_fails_over_when_its_node_is_killed() -> anyhow::Result<()>
{
    let (work, mut nodes) = three_nodes(3)?;
    let certs = work.path().join("certs");
    // The agent knows nodes 2 and 3 and ships to the faster; node 2 is killed mid-stream.
    let other = nodes[&3].core.quic.to_string();
    let agent = Agent::start(
        work.path(),
        &certs,
        nodes[&2].core.quic,
        &["--core", &other, "--batch-max-delay-ms", "50"],
    )?;
    let t0_ms: i64 = 1_600_000_000_000;
    let (devices, per_device) = (8i64, 200i64);
    let publish = |from: i64, to: i64| -> anyhow::Result<()> {
        for d in 0..devices {
            let lines: String = (from..to)
                .map(|i| format!("{{\"ts\":{},\"v\":{}}}\n", t0_ms + i * 1000, d * 1000 + i))
                .collect();
            mosquitto_pub_lines(
                agent.mqtt_port,
                &format!("plant/press{d}/stream"),
                &lines,
                &["-q", "1"],
            )?;
        }
        Ok(())
    };
    publish(0, per_device / 2)?;
    wait_for(
        "the first half acknowledged",
        Duration::from_secs(60),
        || {
            let acked = metric_sum(&agent.metrics(), "updraft_edge_samples_acked_total", None);
            (acked >= (devices * per_device / 2) as f64).then_some(())
        },
    )?;
    nodes.get_mut(&2).context("node 2")?.core.process.kill9();
    publish(per_device / 2, per_device)?;
    wait_for(
        "every sample acknowledged by the surviving nodes",
        Duration::from_secs(120),
        || {
            let acked = metric_sum(&agent.metrics(), "updraft_edge_samples_acked_total", None);
            (acked >= (devices * per_device) as f64).then_some(())
        },
    )?;
    let node = nodes.remove(&2).context("node 2")?;
    let core = node.core.restart_after_kill9()?;
    nodes.insert(
        2,
        Node {
            core,
            cluster: node.cluster,
        },
    );
    // Every node holds every sample of every device, each once.
    let at = (t0_ms + per_device * 1000) as f64 / 1000.0;
    let expected_sum: i64 = (0..devices)
        .flat_map(|d| (0..per_device).map(move |i| d * 1000 + i))
        .sum();
    for (id, n) in &nodes {
        let mut last = String::new();
        let ok = wait_for(
            &format!("node {id} holding every sample"),
            Duration::from_secs(60),
            || {
                let count = n
                    .core
                    .instant_value("sum(count_over_time(stream_v[10m]))", Some(at))
                    .ok()?;
                let sum = n
                    .core
                    .instant_value("sum(sum_over_time(stream_v[10m]))", Some(at))
                    .ok()?;
                last = format!("count {count:?}, sum {sum:?}");
                (count == Some((devices * per_device) as f64) && sum == Some(expected_sum as f64))
                    .then_some(())
            },
        );
        if let Err(e) = ok {
            bail!("{e}: {last}");
        }
    }
    Ok(())
}

/// GET `url` with a bearer token; the status.
fn get_with_token(url: &str, token: &str) -> anyhow::Result<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    Ok(agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()?
        .status()
        .as_u16())
}

#[test]
fn a_token_created_on_one_node_works_on_the_others_and_revoked_stops_everywhere()
-> anyhow::Result<()> {
    let (_work, nodes) = three_nodes(3)?;
    // (The nodes run in development mode: a request without a token is served, one with a
    // token is authenticated like anywhere else, so an unknown token answers 401.)
    let (status, body) = http_post(
        &nodes[&1].core.url("/api/v1/admin/tokens"),
        "application/json",
        &[],
        br#"{"role":"read","description":"cluster test"}"#,
    )?;
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body)?;
    let token = created["data"]["token"]
        .as_str()
        .context("token")?
        .to_owned();
    let id = created["data"]["id"].as_str().context("id")?.to_owned();
    let created_at = Instant::now();
    let on_3 = nodes[&3].core.url("/api/v1/labels");
    wait_for(
        "node 3 accepting the token",
        Duration::from_secs(10),
        || matches!(get_with_token(&on_3, &token), Ok(200)).then_some(()),
    )?;
    // How long it took is a figure, not a verdict (a busy CI machine stretches it): here it
    // must work, within a generous deadline.
    println!(
        "token usable on node 3 {:?} after node 1 answered",
        created_at.elapsed()
    );

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let revoked = agent
        .delete(&nodes[&2].core.url(&format!("/api/v1/admin/tokens/{id}")))
        .call()?
        .status()
        .as_u16();
    assert_eq!(revoked, 200);
    let revoked_at = Instant::now();
    wait_for(
        "node 3 refusing the revoked token",
        Duration::from_secs(10),
        || matches!(get_with_token(&on_3, &token), Ok(401)).then_some(()),
    )?;
    println!(
        "revoked token refused by node 3 after {:?}",
        revoked_at.elapsed()
    );
    assert_eq!(
        get_with_token(&nodes[&1].core.url("/api/v1/labels"), &token)?,
        401
    );

    // The cluster's metrics: every group led by exactly one node, each node's map version
    // past the two token changes.
    wait_for(
        "each of the 4 groups led by one node",
        Duration::from_secs(30),
        || {
            let led: f64 = nodes
                .values()
                .map(|n| metric_sum(&n.core.metrics(), "updraft_cluster_groups_led", None))
                .sum();
            (led == 4.0).then_some(())
        },
    )?;
    // (Gauges are set every second.)
    wait_for(
        "every node at map version 3 of 3 nodes",
        Duration::from_secs(30),
        || {
            nodes
                .values()
                .all(|n| {
                    let text = n.core.metrics();
                    metric_sum(&text, "updraft_cluster_map_version", None) >= 3.0
                        && metric_sum(&text, "updraft_cluster_nodes", None) == 3.0
                })
                .then_some(())
        },
    )?;
    Ok(())
}

/// `core-node tokens create` on a data directory; the token.
fn create_token(data_dir: &Path, tenant: &str, role: &str) -> anyhow::Result<String> {
    let out = Command::new(binary("core-node"))
        .args([
            "tokens",
            "create",
            "--tenant",
            tenant,
            "--role",
            role,
            "--data-dir",
        ])
        .arg(data_dir)
        .output()?;
    if !out.status.success() {
        bail!("tokens create: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// GET with a bearer token; status and body.
fn get_body_with_token(url: &str, token: &str) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

#[test]
fn a_secure_cluster_keeps_tenants_apart_across_nodes() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    node_certs(&certs)?;
    // Node 1's token file, made before it starts, becomes the cluster's at init.
    let data_1 = work.path().join("node-1").join("core-data");
    let admin = create_token(&data_1, "acme", "admin")?;
    let acme_write = create_token(&data_1, "acme", "write")?;
    let acme_read = create_token(&data_1, "acme", "read")?;
    let globex_read = create_token(&data_1, "globex", "read")?;
    let mut nodes: BTreeMap<u64, Node> = BTreeMap::new();
    for id in 1..=3u64 {
        let cluster = std::net::SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let dir = work.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&dir)?;
        let core = Core::start_secure_with_args(
            &dir,
            &certs,
            &[
                "--node-id",
                &id.to_string(),
                "--cluster-listen",
                &cluster.to_string(),
                "--min-free-disk-mib",
                "0",
            ],
        )?;
        nodes.insert(id, Node { core, cluster });
    }
    // Without a token, init is refused; with the admin token it creates the cluster.
    let refused = Command::new(binary("core-node"))
        .args(["cluster", "--url", &nodes[&1].core.url(""), "init"])
        .args(nodes.iter().flat_map(|(id, n)| {
            [
                "--node".to_owned(),
                format!("{id}={},{}", n.cluster, n.core.http),
            ]
        }))
        .output()?;
    assert!(
        !refused.status.success(),
        "init without a token was accepted"
    );
    let init = Command::new(binary("core-node"))
        .args([
            "cluster",
            "--url",
            &nodes[&1].core.url(""),
            "--token",
            &admin,
            "init",
        ])
        .args(nodes.iter().flat_map(|(id, n)| {
            [
                "--node".to_owned(),
                format!("{id}={},{}", n.cluster, n.core.http),
            ]
        }))
        .output()?;
    if !init.status.success() {
        bail!("cluster init: {}", String::from_utf8_lossy(&init.stderr));
    }

    // acme writes through node 2; node 3 knows every token of the cluster and keeps tenants
    // apart: acme's read token sees the sample, globex's does not, the write token may not
    // read, and no token is no answer.
    let write = nodes[&2].core.url("/write");
    wait_for(
        "acme's write through node 2",
        Duration::from_secs(30),
        || {
            http_post(
                &write,
                "text/plain",
                &[("Authorization", &format!("Bearer {acme_write}"))],
                b"plant,site=a temp=21.5",
            )
            .ok()
            .filter(|(s, _)| *s == 204)
        },
    )?;
    let query = nodes[&3]
        .core
        .url(&format!("/api/v1/query?query={}", encode("plant_temp")));
    assert_eq!(http_get(&query)?.0, 401);
    let (status, body) = wait_for(
        "node 3 accepting acme's read token",
        Duration::from_secs(30),
        || {
            get_body_with_token(&query, &acme_read)
                .ok()
                .filter(|(s, _)| *s == 200)
        },
    )?;
    assert_eq!(status, 200);
    assert!(
        body.contains("21.5"),
        "acme reads its sample on node 3: {body}"
    );
    let (status, body) = get_body_with_token(&query, &globex_read)?;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("21.5"), "globex sees acme's sample: {body}");
    assert_eq!(get_body_with_token(&query, &acme_write)?.0, 403);
    // The admin API of node 3 lists acme's tokens only, to acme's admin.
    let (status, body) = get_body_with_token(&nodes[&3].core.url("/api/v1/admin/tokens"), &admin)?;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body)?;
    let tenants: BTreeSet<String> = listed["data"]
        .as_array()
        .context("tokens")?
        .iter()
        .filter_map(|t| t["tenant"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(tenants, BTreeSet::from(["acme".to_owned()]));
    assert_eq!(
        get_body_with_token(&nodes[&3].core.url("/api/v1/admin/cluster"), &acme_read)?.0,
        403,
        "a read token may not see the cluster's admin view"
    );
    Ok(())
}

/// GET with a timeout longer than a read barrier's deadline; status and body.
fn get_slow(url: &str) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut resp = agent.get(url).call()?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_to_string()?))
}

#[test]
fn a_bounded_staleness_read_goes_on_without_a_quorum() -> anyhow::Result<()> {
    let (_work, mut nodes) = three_nodes(3)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let body: String = (0..12)
        .map(|d| format!("st,device=d{d} v={d} {now_ms}\n"))
        .collect();
    let url = nodes[&2].core.url("/write?precision=ms");
    wait_for("the write acknowledged", Duration::from_secs(60), || {
        matches!(post_lines(&url, &body), Ok(204)).then_some(())
    })?;
    // A fresh read passes every group's barrier on node 2 (it holds a replica of each).
    assert_eq!(
        nodes[&2].core.instant_value("count(st_v)", None)?,
        Some(12.0)
    );
    // Nodes 1 and 3 gone: no group has a quorum. A read that accepts a minute of staleness is
    // served by node 2 from what it had applied; a fresh one cannot be.
    for id in [1, 3] {
        nodes.get_mut(&id).context("node")?.core.process.kill9();
    }
    let stale = nodes[&2]
        .core
        .url("/api/v1/query?query=count(st_v)&max_staleness=60s");
    let started = Instant::now();
    let (status, answer) = get_slow(&stale)?;
    println!("stale read: {status} after {:?}", started.elapsed());
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"12\""), "{answer}");
    let (status, answer) = get_slow(&nodes[&2].core.url("/api/v1/query?query=count(st_v)"))?;
    assert_eq!(status, 503, "a fresh read without a quorum: {answer}");
    Ok(())
}

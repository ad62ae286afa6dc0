//! A simulated group of three on the in-process network: for each seed, a random plan drops,
//! delays and duplicates messages, cuts nodes off and crashes and restarts nodes while
//! clients write. After healing, every write a leader acknowledged is on every node, in one
//! order, exactly once, and nothing was applied that no client wrote. A failure names its
//! seed; `UPDRAFT_SIM_SEEDS=N` runs more.
//!
//! A crash stops the node's Raft and reopens its log store from disk (what `kill -9` leaves:
//! fsynced entries and vote); its state machine restarts empty and applies the log again.
//! Not yet: a deterministic scheduler (the runtime here is tokio's, so a seed fixes the plan,
//! not the interleaving).

use super::*;
use crate::cluster::testing::member;
use crate::cluster::types::Proposal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
const WRITES: usize = 10;

struct SimNode {
    raft: Raft<GroupConfig>,
    data: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    dir: tempfile::TempDir,
}

/// A directory on a memory file system where there is one: fsyncs say nothing here.
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}

async fn node(id: NodeId, net: &Arc<MemoryNetwork>) -> SimNode {
    start(id, net, scratch()).await
}

/// Stops node `id` as a crash would and starts it again on what its directory holds.
async fn crash_and_restart(
    nodes: &mut BTreeMap<NodeId, SimNode>,
    id: NodeId,
    net: &Arc<MemoryNetwork>,
) {
    let Some(old) = nodes.remove(&id) else {
        return;
    };
    let _ = old.raft.shutdown().await;
    // The network's handle on the old Raft goes too, so nothing keeps its log store open.
    net.register(id, Arc::new(GroupRouter::default()));
    let SimNode { raft, data, dir } = old;
    drop((raft, data));
    nodes.insert(id, start(id, net, dir).await);
}

async fn start(id: NodeId, net: &Arc<MemoryNetwork>, dir: tempfile::TempDir) -> SimNode {
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        ..Default::default()
    };
    let m = member(id, net, config, dir.path()).await;
    SimNode {
        raft: m.raft,
        data: m.data,
        dir,
    }
}

/// Any node's view of the leader.
fn leader(nodes: &BTreeMap<NodeId, SimNode>) -> Option<NodeId> {
    nodes
        .values()
        .find_map(|n| n.raft.metrics().borrow().current_leader)
}

/// Writes `payload` through whichever node leads, for up to 3 s: a node that says it is not
/// the leader has not appended it, so the write moves on to the one it names; a write that
/// times out may or may not be committed and is not tried again (it would be written twice).
/// Answers whether a leader acknowledged it.
async fn write(nodes: &BTreeMap<NodeId, SimNode>, payload: &[u8]) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        let Some(target) = leader(nodes) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let attempt = nodes[&target].raft.client_write(Proposal(payload.to_vec()));
        match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok(_)) => return true,
            Ok(Err(e)) if e.forward_to_leader::<NodeAddr>().is_some() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => return false,
        }
    }
    false
}

/// Runs one seed; answers how many writes were acknowledged and how many crashes it had.
async fn run(seed: u64) -> Result<(usize, usize), String> {
    let net = Arc::new(MemoryNetwork::default());
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, node(id, &net).await);
    }
    let members: BTreeMap<NodeId, NodeAddr> = (1..=3).map(|id| (id, NodeAddr::default())).collect();
    nodes[&1]
        .raft
        .initialize(members)
        .await
        .map_err(|e| format!("initialize: {e}"))?;

    let plan_rng = std::sync::Mutex::new(StdRng::seed_from_u64(seed));
    net.set_faults(Some(Box::new(move |_, _| {
        let mut r = plan_rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Fault {
            drop_request: r.random_bool(0.08),
            drop_answer: r.random_bool(0.05),
            duplicate: r.random_bool(0.05),
            delay_ms: r.random_range(0..25),
        }
    })));
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut acked = Vec::new();
    let mut tried = Vec::new();
    let mut crashes = 0;
    for i in 0..WRITES {
        match rng.random_range(0..10) {
            0 => net.isolate(rng.random_range(1..=3)),
            1 | 2 => net.heal(),
            3 => {
                crash_and_restart(&mut nodes, rng.random_range(1..=3), &net).await;
                crashes += 1;
            }
            _ => {}
        }
        let payload = format!("{seed}-{i}").into_bytes();
        tried.push(payload.clone());
        if write(&nodes, &payload).await {
            acked.push(payload);
        }
    }

    // Heal, deliver everything, and commit one last write so every node reaches one end.
    net.set_faults(None);
    net.heal();
    let last = format!("{seed}-last").into_bytes();
    tried.push(last.clone());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if tokio::time::Instant::now() > deadline {
            return Err("the healed group never committed a last write".into());
        }
        let Some(target) = leader(&nodes) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let write = nodes[&target].raft.client_write(Proposal(last.clone()));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), write).await {
            break;
        }
    }
    acked.push(last.clone());
    for (id, n) in &nodes {
        loop {
            if n.data.lock().expect("lock").contains(&last) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("node {id} never applied the last write"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let datas: Vec<Vec<Vec<u8>>> = nodes
        .values()
        .map(|n| n.data.lock().expect("lock").clone())
        .collect();
    for (id, d) in nodes.keys().zip(&datas) {
        let upto: Vec<_> = d.iter().take_while(|p| **p != last).cloned().collect();
        let reference: Vec<_> = datas[0]
            .iter()
            .take_while(|p| **p != last)
            .cloned()
            .collect();
        if upto != reference {
            return Err(format!("node {id} applied another sequence than node 1"));
        }
        for a in &acked {
            if d.iter().filter(|p| *p == a).count() != 1 {
                return Err(format!(
                    "node {id}: acknowledged write {} applied {} times",
                    String::from_utf8_lossy(a),
                    d.iter().filter(|p| *p == a).count()
                ));
            }
        }
        if let Some(phantom) = d.iter().find(|p| !tried.contains(p)) {
            return Err(format!(
                "node {id} applied {} that no client wrote",
                String::from_utf8_lossy(phantom)
            ));
        }
    }
    for n in nodes.values() {
        let _ = n.raft.shutdown().await;
    }
    Ok((acked.len() - 1, crashes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_never_lose_an_acknowledged_write() {
    let seeds: u64 = std::env::var("UPDRAFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let (mut failures, mut acked, mut crashes) = (Vec::new(), 0, 0);
    // Eight seeds at a time: each mostly waits on timers.
    for chunk in (0..seeds).collect::<Vec<_>>().chunks(8) {
        let runs: Vec<_> = chunk
            .iter()
            .map(|&seed| tokio::spawn(async move { (seed, run(seed).await) }))
            .collect();
        for r in runs {
            let (seed, result) = r.await.expect("simulation task");
            match result {
                Ok((n, c)) => {
                    acked += n;
                    crashes += c;
                }
                Err(e) => failures.push(format!("seed {seed}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Not a vacuous pass: most writes got through despite the faults.
    let tried = seeds as usize * WRITES;
    assert!(
        acked * 2 >= tried,
        "only {acked} of {tried} writes were acknowledged"
    );
    assert!(
        crashes > 0,
        "no seed crashed a node: the plan does not test restarts"
    );
    eprintln!(
        "simulation: {seeds} seeds, {acked} of {tried} writes acknowledged, {crashes} crashes"
    );
}

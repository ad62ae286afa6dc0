//! Three nodes of one group in one process, on the in-process network: the log store, the
//! network and openraft together elect, replicate, fail over when the leader is cut off, and
//! bring the old leader back in line when the partition heals.

use super::*;
use crate::cluster::testing::member;
use crate::cluster::types::Proposal;
use std::collections::BTreeMap;
use std::time::Duration;

/// Generous: the deadline of every wait below (a busy 2-core machine runs this).
const WAIT: Duration = Duration::from_secs(60);

struct Node {
    raft: Raft<GroupConfig>,
    data: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    _dir: tempfile::TempDir,
}

async fn start(id: NodeId, net: &Arc<MemoryNetwork>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = openraft::Config {
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        ..Default::default()
    };
    let m = member(id, net, config, dir.path()).await;
    Node {
        raft: m.raft,
        data: m.data,
        _dir: dir,
    }
}

async fn leader_among(nodes: &[&Node], not: Option<NodeId>) -> NodeId {
    let metrics = nodes[0].raft.metrics();
    let mut rx = metrics;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let leader = rx.borrow().current_leader;
            if let Some(l) = leader.filter(|l| Some(*l) != not) {
                // Everyone in `nodes` must agree.
                if nodes
                    .iter()
                    .all(|n| n.raft.metrics().borrow().current_leader == Some(l))
                {
                    return l;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        }
    })
    .await;
    found.expect("a leader within the deadline")
}

async fn wait_applied(node: &Node, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.data.lock().expect("lock").len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} applied {} of {count} entries",
            node.raft.metrics().borrow().id,
            node.data.lock().expect("lock").len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_elects_replicates_and_fails_over_when_its_leader_is_cut_off() {
    let net = Arc::new(MemoryNetwork::default());
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, &net).await);
    }
    let members: BTreeMap<NodeId, NodeAddr> = (1..=3).map(|id| (id, NodeAddr::default())).collect();
    nodes[&1]
        .raft
        .initialize(members)
        .await
        .expect("initialize");
    let all: Vec<&Node> = nodes.values().collect();
    let first = leader_among(&all, None).await;

    nodes[&first]
        .raft
        .client_write(Proposal(b"one".to_vec()))
        .await
        .expect("committed");
    for node in nodes.values() {
        wait_applied(node, 1).await;
    }

    // Cut the leader off: the other two elect one of themselves and go on committing.
    net.isolate(first);
    let rest: Vec<&Node> = nodes
        .iter()
        .filter(|(id, _)| **id != first)
        .map(|(_, n)| n)
        .collect();
    let second = leader_among(&rest, Some(first)).await;
    assert_ne!(second, first);
    nodes[&second]
        .raft
        .client_write(Proposal(b"two".to_vec()))
        .await
        .expect("committed by the majority");
    for node in &rest {
        wait_applied(node, 2).await;
    }
    // The isolated old leader cannot have applied what the majority wrote without it.
    assert_eq!(nodes[&first].data.lock().expect("lock").len(), 1);

    // Healed, the old leader catches up with the same entries in the same order.
    net.heal();
    wait_applied(&nodes[&first], 2).await;
    for node in nodes.values() {
        assert_eq!(
            *node.data.lock().expect("lock"),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
    }
    for node in nodes.values() {
        node.raft.shutdown().await.expect("shutdown");
    }
}

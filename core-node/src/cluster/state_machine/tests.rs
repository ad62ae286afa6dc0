//! A shard group of three replicas, each over its own storage, on the in-process network:
//! replicas end with equal shards, a replica that crashes (its unflushed head lost) re-applies
//! from the group's log, and a replica cut off while the leader snapshots and purges its log
//! catches up from a snapshot of shard data.

use super::*;
use crate::cluster::log_store::RaftLogs;
use crate::cluster::raft_network::{GroupNetworkFactory, GroupRouter, MemoryNetwork};
use crate::cluster::types::Proposal;
use crate::storage::record::Batch;
use crate::storage::{Durability, SampleBatch, StorageOptions};
use openraft::{Raft, SnapshotPolicy};
use protocols::model::SHARD_COUNT;
use protocols::wire::{AgentId, SeriesChunk, WriteBatch};
use protocols::{Labels, Sample, Tenant};
use std::collections::BTreeMap;
use std::time::Duration;

/// Generous: the deadline of every wait below (a busy 2-core machine runs this).
const WAIT: Duration = Duration::from_secs(60);
const GROUP: GroupId = GroupId(1);
const BASE_MS: i64 = 1_700_000_000_000;

fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}

fn config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // Snapshot and purge often, so that a replica cut off for a while needs a snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    Arc::new(config.validate().expect("config"))
}

/// Replica `id`'s storage settings: the replicas differ in head size and in encryption at
/// rest, which must not change what they hold. The head is not flushed at a stop: a stop is
/// a crash.
fn options(id: NodeId) -> StorageOptions {
    StorageOptions {
        durability: Durability::Buffered,
        head_max_samples: if id == 2 { 7 } else { 100_000 },
        flush_head_on_stop: false,
        min_free_disk_bytes: 0,
        encryption: (id == 3).then(encryption),
        ..StorageOptions::default()
    }
}

fn encryption() -> crate::storage::Encryption {
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    crate::storage::Encryption::from_keyring(&ring).expect("keys")
}

struct Replica {
    dir: tempfile::TempDir,
    options: StorageOptions,
    storage: Storage,
    raft: Raft<GroupConfig>,
}

async fn start(
    id: NodeId,
    dir: tempfile::TempDir,
    options: StorageOptions,
    net: &Arc<MemoryNetwork>,
) -> Replica {
    let storage = Storage::open(dir.path(), options.clone()).expect("storage");
    let logs = RaftLogs::open(&dir.path().join("raft")).expect("raft logs");
    let all = 0..=(SHARD_COUNT - 1) as u16;
    let machine = ShardMachine::open(GROUP, all, storage.clone()).expect("machine");
    let raft = Raft::new(
        id,
        config(),
        GroupNetworkFactory::new(GROUP, net.link(id)),
        logs.group(GROUP),
        machine,
    )
    .await
    .expect("raft");
    let router = Arc::new(GroupRouter::default());
    router.add(GROUP, raft.clone());
    net.register(id, router);
    Replica {
        dir,
        options,
        storage,
        raft,
    }
}

/// Replicas 1 to 3 of the group on `net`, each with `options(id)`, the group initialised.
async fn group_of_three(
    net: &Arc<MemoryNetwork>,
    options: impl Fn(NodeId) -> StorageOptions,
) -> BTreeMap<NodeId, Replica> {
    let mut replicas = BTreeMap::new();
    for id in 1..=3 {
        replicas.insert(id, start(id, scratch(), options(id), net).await);
    }
    let members: BTreeMap<NodeId, NodeAddr> = (1..=3).map(|id| (id, NodeAddr::default())).collect();
    replicas[&1]
        .raft
        .initialize(members)
        .await
        .expect("initialize");
    replicas
}

/// Stops replica `id` as a crash would (the head is not flushed) and starts it again.
async fn crash_and_restart(
    replicas: &mut BTreeMap<NodeId, Replica>,
    id: NodeId,
    net: &Arc<MemoryNetwork>,
) {
    let old = replicas.remove(&id).expect("replica");
    old.raft.shutdown().await.expect("shutdown");
    let Replica {
        dir,
        options,
        storage,
        raft,
    } = old;
    drop(raft);
    drop(storage);
    replicas.insert(id, start(id, dir, options, net).await);
}

fn tenant() -> Tenant {
    Tenant::new("acme".to_owned()).expect("tenant")
}

fn labels(device: u64) -> Labels {
    Labels::from_metric("temperature", [("device", format!("d{device}"))]).expect("labels")
}

fn samples(round: u64, device: u64) -> Vec<Sample> {
    (0..5)
        .map(|i| {
            let t = BASE_MS + (round * 5 + i) as i64 * 10_000;
            Sample::new(t, (round * 100 + device + i) as f64)
        })
        .collect()
}

/// Round `round`'s write: an agent batch on even rounds (sequence = round), an HTTP sample
/// batch on odd ones; 8 devices, 5 samples each.
fn write(round: u64) -> Record {
    if round.is_multiple_of(2) {
        Record::Write(Batch::Chunks(WriteBatch {
            agent_id: AgentId("gateway-1".into()),
            epoch: 1,
            sequence: round,
            tenant: tenant(),
            series: (0..8)
                .map(|d| SeriesChunk::encode(labels(d), samples(round, d)).expect("chunk"))
                .collect(),
        }))
    } else {
        Record::Write(Batch::Samples(SampleBatch {
            tenant: tenant(),
            series: (0..8).map(|d| (labels(d), samples(round, d))).collect(),
        }))
    }
}

async fn leader(replicas: &BTreeMap<NodeId, Replica>) -> NodeId {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let views: Vec<Option<NodeId>> = replicas
            .values()
            .map(|r| r.raft.metrics().borrow().current_leader)
            .collect();
        if let Some(Some(l)) = views.first()
            && views.iter().all(|v| *v == Some(*l))
            && replicas.contains_key(l)
        {
            return *l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreed leader: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Proposes rounds `rounds` through the leader; every write must store its 40 samples, and
/// the agent's batch proposed a second time must store nothing (the group's offsets).
async fn write_rounds(replicas: &BTreeMap<NodeId, Replica>, rounds: std::ops::Range<u64>) {
    let l = leader(replicas).await;
    for round in rounds {
        let raft = &replicas[&l].raft;
        let answer = raft
            .client_write(Proposal(write(round).encode()))
            .await
            .expect("committed");
        assert_eq!(answer.data, Applied(40), "round {round}");
        if round.is_multiple_of(2) {
            let again = raft
                .client_write(Proposal(write(round).encode()))
                .await
                .expect("committed");
            assert_eq!(again.data, Applied(0), "the resent batch of round {round}");
        }
    }
}

/// Waits until every replica applied what the leader did, then checks that they hold equal
/// shards with `rounds × 40` samples.
async fn assert_converged(replicas: &BTreeMap<NodeId, Replica>, rounds: u64) {
    let l = leader(replicas).await;
    let index = replicas[&l].raft.metrics().borrow().last_log_index;
    for (id, r) in replicas {
        r.raft
            .wait(Some(WAIT))
            .applied_index_at_least(index, &format!("replica {id} applies up to {index:?}"))
            .await
            .expect("applied");
    }
    let sums: BTreeMap<NodeId, _> = replicas
        .iter()
        .map(|(id, r)| (*id, r.storage.shard_checksums().expect("checksums")))
        .collect();
    let samples: u64 = sums[&l].iter().map(|s| s.samples).sum();
    assert_eq!(samples, rounds * 40, "samples held by the leader");
    for (id, sum) in &sums {
        let differ: Vec<(usize, _, _)> = sum
            .iter()
            .zip(&sums[&l])
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(shard, (a, b))| (shard, *a, *b))
            .collect();
        assert!(
            differ.is_empty(),
            "replica {id} differs from the leader {l} in shards (shard, replica, leader) {differ:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hold_equal_shards_through_a_crash_and_a_snapshot() {
    let net = Arc::new(MemoryNetwork::default());
    let mut replicas = group_of_three(&net, options).await;

    write_rounds(&replicas, 0..10).await;
    assert_converged(&replicas, 10).await;

    // A follower crashes: what its head held is gone from storage, and comes back from the
    // group's log (its applied position is the one of its last head flush).
    let l = leader(&replicas).await;
    let follower = (1..=3).find(|id| *id != l).expect("a follower");
    crash_and_restart(&mut replicas, follower, &net).await;
    write_rounds(&replicas, 10..14).await;
    assert_converged(&replicas, 14).await;

    // The leader crashes too: a new one is elected and the old one catches up.
    let l = leader(&replicas).await;
    crash_and_restart(&mut replicas, l, &net).await;
    write_rounds(&replicas, 14..16).await;
    assert_converged(&replicas, 16).await;

    // A follower is cut off while the leader writes, snapshots and purges its log past what
    // the follower has: it can only catch up from a snapshot.
    let l = leader(&replicas).await;
    let cut = (1..=3).find(|id| *id != l).expect("a follower");
    let behind = replicas[&cut].raft.metrics().borrow().last_applied;
    net.isolate(cut);
    write_rounds(&replicas, 16..56).await;
    let leader_raft = replicas[&l].raft.clone();
    leader_raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.map(|p| p.index) > behind.map(|b| b.index),
            "the leader purges its log past the cut-off follower",
        )
        .await
        .expect("purged");
    net.heal();
    assert_converged(&replicas, 56).await;
    let installed = replicas[&cut].raft.metrics().borrow().snapshot;
    assert!(
        installed.map(|s| s.index) > behind.map(|b| b.index),
        "replica {cut} caught up from a snapshot (it has {installed:?}, was at {behind:?})"
    );

    // And a replica restarted after installing it still holds the same.
    crash_and_restart(&mut replicas, cut, &net).await;
    write_rounds(&replicas, 56..58).await;
    assert_converged(&replicas, 58).await;
    for r in replicas.values() {
        r.raft.shutdown().await.expect("shutdown");
    }
}

/// A leader cut off from the others: what it is asked to write meanwhile is never
/// acknowledged and never applied anywhere, the majority elects and goes on, and after the
/// heal the old leader holds exactly what the majority does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_acknowledges_nothing_and_its_writes_vanish() {
    let net = Arc::new(MemoryNetwork::default());
    let mut replicas = group_of_three(&net, options).await;
    write_rounds(&replicas, 0..4).await;
    assert_converged(&replicas, 4).await;

    let old = leader(&replicas).await;
    net.isolate(old);
    // Round 1001 goes to the isolated leader: no quorum, so no acknowledgement.
    let stale = replicas[&old].raft.clone();
    let attempt =
        tokio::spawn(async move { stale.client_write(Proposal(write(1001).encode())).await });
    // The majority elects one of its own and commits.
    let majority: BTreeMap<NodeId, Replica> = {
        let mut rest = BTreeMap::new();
        for id in (1..=3).filter(|id| *id != old) {
            rest.insert(id, replicas.remove(&id).expect("replica"));
        }
        rest
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let new = loop {
        let views: Vec<Option<NodeId>> = majority
            .values()
            .map(|r| r.raft.metrics().borrow().current_leader)
            .collect();
        if let Some(Some(l)) = views.first()
            && *l != old
            && views.iter().all(|v| *v == Some(*l))
        {
            break *l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new leader: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for round in 4..8 {
        let answer = majority[&new]
            .raft
            .client_write(Proposal(write(round).encode()))
            .await
            .expect("the majority commits");
        assert_eq!(answer.data, Applied(40));
    }
    assert!(
        !attempt.is_finished(),
        "the isolated leader answered a write it cannot have committed"
    );
    net.heal();
    // Healed, the old leader learns of the new term: its pending write fails, never
    // acknowledged, and every replica converges on the majority's data (round 1001 is not
    // in it: `assert_converged` counts 8 rounds exactly).
    let outcome = tokio::time::timeout(WAIT, attempt)
        .await
        .expect("the stale write ends")
        .expect("task");
    assert!(
        outcome.is_err(),
        "the isolated leader acknowledged {outcome:?}"
    );
    replicas.extend(majority);
    assert_converged(&replicas, 8).await;
    for r in replicas.values() {
        r.raft.shutdown().await.expect("shutdown");
    }
}

/// Retention decided by the leader and logged: every replica drops the same expired data
/// (and the series left without data), and keeps the rest, whatever its own head size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_logged_by_the_leader_drops_the_same_data_everywhere() {
    use crate::storage::partitions::Retention;
    // "Now" is 40 days after BASE_MS; data is kept 7 days.
    let now_ms = BASE_MS + 40 * 86_400_000;
    let net = Arc::new(MemoryNetwork::default());
    let replicas = group_of_three(&net, |id| StorageOptions {
        retention: Retention {
            default: Some(Duration::from_secs(7 * 86_400)),
            per_tenant: Default::default(),
        },
        clock: crate::storage::Clock::fixed(now_ms),
        local_retention: false,
        ..options(id)
    })
    .await;
    let l = leader(&replicas).await;
    // Old data (from BASE_MS, written before the retention settings refuse it: applied as a
    // replica would, straight through the log) and fresh data.
    let old = Record::Write(Batch::Samples(SampleBatch {
        tenant: tenant(),
        series: (0..8).map(|d| (labels(d), samples(0, d))).collect(),
    }));
    let fresh_labels =
        |d: u64| Labels::from_metric("pressure", [("device", format!("d{d}"))]).expect("labels");
    let fresh = Record::Write(Batch::Samples(SampleBatch {
        tenant: tenant(),
        series: (0..4)
            .map(|d| {
                (
                    fresh_labels(d),
                    vec![Sample::new(now_ms - 3_600_000, d as f64)],
                )
            })
            .collect(),
    }));
    for r in [old, fresh] {
        replicas[&l]
            .raft
            .client_write(Proposal(r.encode()))
            .await
            .expect("committed");
    }
    let all = 0..=(SHARD_COUNT - 1) as u16;
    // The leader decides from its partitions (a head is flushed within minutes); the other
    // replicas still hold the old samples in their heads or in chunks, as their head sizes
    // had it: the logged drop removes them wherever they are.
    replicas[&l].storage.flush().expect("flush");
    let drops = replicas[&l]
        .storage
        .group_retention_drops(&all)
        .expect("drops");
    assert!(!drops.is_empty(), "the old partition is due");
    for r in drops {
        replicas[&l]
            .raft
            .client_write(Proposal(r.encode()))
            .await
            .expect("committed");
    }
    let forgets = replicas[&l]
        .storage
        .group_empty_series(&all)
        .expect("empty series");
    assert!(!forgets.is_empty(), "the old series hold nothing now");
    for r in forgets {
        replicas[&l]
            .raft
            .client_write(Proposal(r.encode()))
            .await
            .expect("committed");
    }
    let index = replicas[&l].raft.metrics().borrow().last_log_index;
    for r in replicas.values() {
        r.raft
            .wait(Some(WAIT))
            .applied_index_at_least(index, "applied")
            .await
            .expect("applied");
    }
    for (id, r) in &replicas {
        let sums = r.storage.shard_checksums().expect("checksums");
        let series: u64 = sums.iter().map(|s| s.series).sum();
        let samples: u64 = sums.iter().map(|s| s.samples).sum();
        assert_eq!(
            (series, samples),
            (4, 4),
            "replica {id} keeps only the fresh series"
        );
        assert_eq!(
            sums,
            replicas[&l].storage.shard_checksums().expect("checksums"),
            "replica {id} equals the leader"
        );
    }
    for r in replicas.values() {
        r.raft.shutdown().await.expect("shutdown");
    }
}

/// A follower whose disk is wiped comes back empty with the same id: the leader does not
/// panic (openraft's `loosen-follower-log-revert`), and the follower catches up to equal
/// shards from the leader's log and snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_rejoins_and_catches_up() {
    let net = Arc::new(MemoryNetwork::default());
    let mut replicas = group_of_three(&net, options).await;
    write_rounds(&replicas, 0..30).await;
    assert_converged(&replicas, 30).await;
    let l = leader(&replicas).await;
    let wiped = (1..=3).find(|id| *id != l).expect("a follower");
    let old = replicas.remove(&wiped).expect("replica");
    old.raft.shutdown().await.expect("shutdown");
    let Replica { options, .. } = old;
    // A new, empty directory: everything the node had is gone.
    replicas.insert(wiped, start(wiped, scratch(), options, &net).await);
    write_rounds(&replicas, 30..34).await;
    assert_converged(&replicas, 34).await;
    for r in replicas.values() {
        r.raft.shutdown().await.expect("shutdown");
    }
}

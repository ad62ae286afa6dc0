//! Applying a record depends only on the record and the state it is applied to: two stores
//! fed the same admitted records, with other limits, retention, clocks, head sizes, flushes,
//! compactions and crashes, hold the same series and samples in every shard; and an
//! acknowledged sample is never refused when the WAL is replayed under other settings.

use super::record::{Batch, Record};
use super::*;
use proptest::prelude::*;
use protocols::wire::{AgentId, SeriesChunk};
use protocols::{Labels, Sample, SeriesId, Tenant};
use std::time::Duration;

/// 2024-01-01T00:00:00Z.
const BASE_MS: i64 = 1_704_067_200_000;
const DAY_MS: i64 = 86_400_000;

/// What the test feeds both stores, in the same order.
#[derive(Debug, Clone)]
enum Op {
    Agent {
        agent: u8,
        epoch: u64,
        sequence: u64,
        tenant: u8,
        series: Vec<(u8, Vec<(i64, i32)>)>,
    },
    Http {
        tenant: u8,
        series: Vec<(u8, Vec<(i64, i32)>)>,
    },
    /// Drop the partition holding day `day` of `tenant`.
    Drop { tenant: u8, day: i64 },
    /// Forget these metrics of `tenant` (those still holding samples stay).
    Forget { tenant: u8, metrics: Vec<u8> },
}

/// What one store does on its own between two records.
#[derive(Debug, Clone, Copy)]
enum Local {
    Nothing,
    /// Flush the head and checkpoint.
    Flush,
    /// Merge every dirty day now.
    Compact,
    /// Stop without flushing the head (as a crash leaves it: the head only in the WAL) and
    /// open again, replaying the WAL.
    Crash,
}

fn tenant(t: u8) -> Tenant {
    Tenant::new(format!("t{t}")).expect("valid tenant")
}

fn series_labels(metric: u8) -> Labels {
    // Metrics 4 and 5 carry three labels: over store B's label limit.
    let mut pairs = vec![("site", format!("s{}", metric % 2))];
    if metric >= 4 {
        pairs.push(("extra", "x".into()));
    }
    Labels::from_metric(&format!("m{metric}"), pairs).expect("valid labels")
}

/// Samples, ascending with one per timestamp (what both batch kinds promise).
fn samples(raw: &[(i64, i32)]) -> Vec<Sample> {
    let mut s: Vec<Sample> = raw
        .iter()
        .map(|&(minute, v)| Sample::new(BASE_MS + minute * 60_000, f64::from(v) / 4.0))
        .collect();
    s.sort_by_key(|x| x.timestamp_ms);
    s.dedup_by_key(|x| x.timestamp_ms);
    s
}

fn record(op: &Op) -> Record {
    match op {
        Op::Agent {
            agent,
            epoch,
            sequence,
            tenant: t,
            series,
        } => Record::Write(Batch::Chunks(WriteBatch {
            agent_id: AgentId(format!("agent-{agent}")),
            epoch: *epoch,
            sequence: *sequence,
            tenant: tenant(*t),
            series: series
                .iter()
                .map(|(m, raw)| {
                    SeriesChunk::encode(series_labels(*m), samples(raw)).expect("encodes")
                })
                .collect(),
        })),
        Op::Http { tenant: t, series } => {
            let mut seen = std::collections::HashSet::new();
            Record::Write(Batch::Samples(SampleBatch {
                tenant: tenant(*t),
                // A label set appears once per batch.
                series: series
                    .iter()
                    .filter(|(m, _)| seen.insert(*m))
                    .map(|(m, raw)| (series_labels(*m), samples(raw)))
                    .collect(),
            }))
        }
        Op::Drop { tenant: t, day } => Record::DropPartition {
            tenant: tenant(*t),
            index: partitions::index_of(BASE_MS + day * DAY_MS),
        },
        Op::Forget { tenant: t, metrics } => Record::ForgetSeries {
            tenant: tenant(*t),
            ids: metrics
                .iter()
                .map(|m| SeriesId::of(&tenant(*t), &series_labels(*m)))
                .collect(),
        },
    }
}

fn series_strategy() -> impl Strategy<Value = Vec<(u8, Vec<(i64, i32)>)>> {
    // Minutes over three weeks: several daily chunks and weekly partitions.
    prop::collection::vec(
        (
            0u8..6,
            prop::collection::vec((0i64..30_240, -8i32..8), 1..6),
        ),
        1..4,
    )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..2, 0u64..2, 0u64..12, 0u8..2, series_strategy()).prop_map(
            |(agent, epoch, sequence, tenant, series)| Op::Agent { agent, epoch, sequence, tenant, series }
        ),
        4 => (0u8..2, series_strategy()).prop_map(|(tenant, series)| Op::Http { tenant, series }),
        1 => (0u8..2, 0i64..21).prop_map(|(tenant, day)| Op::Drop { tenant, day }),
        1 => (0u8..2, prop::collection::vec(0u8..6, 1..4))
            .prop_map(|(tenant, metrics)| Op::Forget { tenant, metrics }),
    ]
}

fn local_strategy() -> impl Strategy<Value = Local> {
    prop_oneof![
        8 => Just(Local::Nothing),
        2 => Just(Local::Flush),
        1 => Just(Local::Compact),
        1 => Just(Local::Crash),
    ]
}

/// A directory on a memory file system where there is one: the test's cost is fsyncs (every
/// flush, checkpoint and reopen), which say nothing about determinism.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}

/// A store with its own settings, reopened after a simulated crash.
struct Node {
    dir: tempfile::TempDir,
    options: StorageOptions,
    storage: Option<Storage>,
}

impl Node {
    fn new(options: StorageOptions) -> Self {
        let dir = scratch_dir();
        let storage = Some(Storage::open(dir.path(), options.clone()).expect("open"));
        Self {
            dir,
            options,
            storage,
        }
    }

    fn storage(&self) -> &Storage {
        self.storage.as_ref().expect("open")
    }

    fn local(&mut self, what: Local) {
        match what {
            Local::Nothing => {}
            Local::Flush => self.storage().checkpoint().expect("checkpoint"),
            Local::Compact => {
                let all_due = CompactionOptions {
                    merge_after_chunks: 1,
                    seal_after: Duration::ZERO,
                    ..CompactionOptions::default()
                };
                self.storage().compact_now(&all_due).expect("compact");
            }
            Local::Crash => {
                self.storage.take();
                self.storage =
                    Some(Storage::open(self.dir.path(), self.options.clone()).expect("reopen"));
            }
        }
    }
}

/// Store A: generous settings, today's clock, a large head, in clear. Store B: one series per
/// tenant, two labels per series, a day of retention on a clock in 2100, a head of 5 samples,
/// encrypted at rest. If applying read any of these settings, B would refuse what A stores.
fn options_a() -> StorageOptions {
    StorageOptions {
        durability: Durability::Buffered,
        compaction: CompactionOptions {
            interval: Duration::from_secs(3600),
            ..CompactionOptions::default()
        },
        flush_head_on_stop: false,
        min_free_disk_bytes: 0,
        ..StorageOptions::default()
    }
}

fn options_b() -> StorageOptions {
    StorageOptions {
        limits: Limits {
            max_series_per_tenant: 1,
            max_labels_per_series: 2,
            ..Limits::default()
        },
        retention: Retention {
            default: Some(Duration::from_secs(86_400)),
            per_tenant: Default::default(),
        },
        clock: Clock::fixed(4_102_444_800_000),
        head_max_samples: 5,
        encryption: Some(encryption()),
        ..options_a()
    }
}

/// Fresh data keys for an encrypted store.
fn encryption() -> Encryption {
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    Encryption::from_keyring(&ring).expect("keys")
}

fn offsets(s: &Storage) -> Vec<Option<(u64, u64)>> {
    (0..2)
        .map(|a| s.agent_offset(&format!("agent-{a}")).expect("offset"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_same_records_give_the_same_shards_whatever_the_settings_clock_and_crashes(
        steps in prop::collection::vec((op_strategy(), local_strategy(), local_strategy()), 1..60)
    ) {
        let mut a = Node::new(options_a());
        let mut b = Node::new(options_b());
        let mut stored = 0usize;
        for (op, local_a, local_b) in &steps {
            let from_a = a.storage().apply_admitted(record(op)).expect("applied on a");
            let from_b = b.storage().apply_admitted(record(op)).expect("applied on b");
            // Samples stored must agree; how many partitions a drop found is local (it
            // depends on head flushes), what it removes is not.
            if matches!(op, Op::Agent { .. } | Op::Http { .. }) {
                prop_assert_eq!(from_a, from_b, "{:?}", op);
                stored += from_a;
            }
            a.local(*local_a);
            b.local(*local_b);
        }
        let (sum_a, sum_b) = (
            a.storage().shard_checksums().expect("checksums"),
            b.storage().shard_checksums().expect("checksums"),
        );
        for (shard, (x, y)) in sum_a.iter().zip(&sum_b).enumerate() {
            prop_assert_eq!(x, y, "shard {}", shard);
        }
        prop_assert_eq!(offsets(a.storage()), offsets(b.storage()));
        // The comparison is not between two empty stores: every write stored something
        // (drops and removals may have taken some of it away again).
        let series: u64 = sum_a.iter().map(|s| s.series).sum();
        let removals = steps
            .iter()
            .any(|(op, _, _)| matches!(op, Op::Drop { .. } | Op::Forget { .. }));
        prop_assert!(stored == 0 || series > 0 || removals, "{} samples stored, no series left", stored);
    }
}

/// A store whose limit refused a series at admission, restarted after a crash with a lower
/// limit (0: no new series at all) and then a higher one: replay stores exactly what was
/// acknowledged, refusing nothing and adding nothing.
#[test]
fn replay_under_other_limits_stores_exactly_what_was_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = tenant(0);
    let with_limit = |n: u64| StorageOptions {
        limits: Limits {
            max_series_per_tenant: n,
            ..Limits::default()
        },
        ..options_a()
    };
    let batch = |metrics: &[u8]| SampleBatch {
        tenant: t.clone(),
        series: metrics
            .iter()
            .map(|m| (series_labels(*m), samples(&[(1, 1), (2, 2)])))
            .collect(),
    };
    let before = {
        let s = Storage::open(dir.path(), with_limit(2)).expect("open");
        let out = s
            .submit_samples(batch(&[0, 1, 2]))
            .expect("queued")
            .blocking_recv()
            .expect("answered")
            .expect("stored");
        assert!(
            matches!(
                out,
                AckOutcome::Stored {
                    samples: 4,
                    rejected_series: 1,
                    ..
                }
            ),
            "{out:?}"
        );
        s.shard_checksums().expect("checksums")
    };
    let series = |sums: &[ShardChecksum]| sums.iter().map(|s| s.series).sum::<u64>();
    assert_eq!(series(&before), 2);
    for limit in [0, 1_000] {
        let s = Storage::open(dir.path(), with_limit(limit)).expect("reopen");
        assert_eq!(
            s.shard_checksums().expect("checksums"),
            before,
            "limit {limit}"
        );
    }
}

/// An acknowledged sample older than the retention of a later clock is still there after a
/// crash and a replay with that clock: retention is decided when the write is accepted.
#[test]
fn replay_with_a_later_clock_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let retention = Retention {
        default: Some(Duration::from_secs(7 * 86_400)),
        per_tenant: Default::default(),
    };
    let at = |ms: i64| StorageOptions {
        retention: retention.clone(),
        clock: Clock::fixed(ms),
        ..options_a()
    };
    let before = {
        let s = Storage::open(dir.path(), at(BASE_MS + DAY_MS)).expect("open");
        let out = s
            .submit_samples(SampleBatch {
                tenant: tenant(1),
                series: vec![(series_labels(0), samples(&[(0, 3), (5, 4)]))],
            })
            .expect("queued")
            .blocking_recv()
            .expect("answered")
            .expect("stored");
        assert!(
            matches!(
                out,
                AckOutcome::Stored {
                    samples: 2,
                    rejected_series: 0,
                    ..
                }
            ),
            "{out:?}"
        );
        s.shard_checksums().expect("checksums")
    };
    // A year later the samples are far past retention; the replay stores them anyway (the
    // next retention pass drops their partition, as a logged record).
    let s = Storage::open(dir.path(), at(BASE_MS + 365 * DAY_MS)).expect("reopen");
    assert_eq!(s.shard_checksums().expect("checksums"), before);
}

/// A panic of the writer thread marks storage failed with the panic's message, and every
/// later write is refused with it instead of "stopped".
#[test]
fn a_panicking_writer_marks_storage_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), options_a()).expect("open");
    assert_eq!(s.health(), StorageHealth::Healthy);
    let mut watch = s.watch_health();
    s.shared
        .queue
        .as_ref()
        .expect("queue")
        .send(writer::Request::Panic)
        .expect("sent");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let failed = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), watch.wait_for(|h| h.is_failed()))
            .await
            .expect("failed within 30 s")
            .expect("watch open")
            .clone()
    });
    let reason = failed.reason().expect("a reason").to_owned();
    assert!(
        reason.contains("storage writer thread panicked: panic requested by a test"),
        "{reason}"
    );
    match s.submit_samples(SampleBatch {
        tenant: tenant(0),
        series: vec![(series_labels(0), samples(&[(1, 1)]))],
    }) {
        Err(SubmitError::Unavailable { reason: r, batch }) => {
            assert_eq!(r, reason);
            assert_eq!(batch.sample_count(), 1, "the batch is handed back");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

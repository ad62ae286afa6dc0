use super::*;
use protocols::wire::{AgentId, SeriesChunk};
use protocols::{Labels, Sample, SeriesId, Tenant};
use query::{DataSource, Matcher};
use std::time::Duration;

fn batch(seq: u64, series: Vec<(Labels, Vec<Sample>)>) -> WriteBatch {
    WriteBatch {
        agent_id: AgentId("a1".into()),
        epoch: 9,
        sequence: seq,
        tenant: Tenant::default(),
        series: series
            .into_iter()
            .map(|(labels, samples)| SeriesChunk::encode(labels, samples).expect("encodes"))
            .collect(),
    }
}

thread_local! {
    /// The keys of the running test's storage when it runs encrypted (each test has its own
    /// thread): the same keys on every open, as a node's keyring gives them.
    static ENCRYPTION: std::cell::RefCell<Option<Encryption>> = const { std::cell::RefCell::new(None) };
}

/// Runs `test` with encryption at rest on: every storage it opens through [`quiet`] seals.
fn encrypted(test: fn()) {
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let e = Encryption::from_keyring(&ring).expect("keys");
    ENCRYPTION.with(|cell| *cell.borrow_mut() = Some(e));
    test();
}

/// Options whose background compactor never runs during a test (encrypted in the
/// `encrypted` copy of each test).
fn quiet() -> StorageOptions {
    StorageOptions {
        compaction: CompactionOptions {
            interval: Duration::from_secs(3600),
            ..CompactionOptions::default()
        },
        encryption: ENCRYPTION.with(|cell| cell.borrow().clone()),
        ..StorageOptions::default()
    }
}

fn labels(metric: &str, pairs: &[(&str, &str)]) -> Labels {
    Labels::from_metric(metric, pairs.iter().copied()).expect("valid labels")
}

fn write(s: &Storage, b: WriteBatch) -> AckOutcome {
    s.submit(b)
        .expect("queued")
        .blocking_recv()
        .expect("answered")
        .expect("stored")
}

/// Writes `b` and flushes the head, so that its samples are chunks in fjall.
fn write_flushed(s: &Storage, b: WriteBatch) -> AckOutcome {
    let out = write(s, b);
    s.checkpoint().expect("head flushed");
    out
}

fn stores_reads_and_deduplicates_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Tenant::default();
    let temp = labels("temp", &[("site", "s1"), ("device", "d1")]);
    let hum = labels("hum", &[("site", "s2"), ("device", "d1")]);
    {
        let s = Storage::open(dir.path(), quiet()).expect("open");
        let out = write(
            &s,
            batch(
                1,
                vec![
                    (
                        temp.clone(),
                        vec![
                            Sample::new(2000, 21.5),
                            Sample::new(-5, f64::from_bits(0x7ff0_0000_0000_0002)),
                        ],
                    ),
                    (hum.clone(), vec![Sample::new(1000, 40.0)]),
                ],
            ),
        );
        assert_eq!(
            out,
            AckOutcome::Stored {
                samples: 3,
                rejected_series: 0,
                rejection: None
            }
        );
        // Same (epoch, sequence) again: not applied, even with different content.
        let dup = write(
            &s,
            batch(1, vec![(temp.clone(), vec![Sample::new(3000, 1.0)])]),
        );
        assert_eq!(dup, AckOutcome::Duplicate);
    }
    let s = Storage::open(dir.path(), quiet()).expect("reopen");
    let dup = write(
        &s,
        batch(1, vec![(temp.clone(), vec![Sample::new(4000, 1.0)])]),
    );
    assert_eq!(dup, AckOutcome::Duplicate, "offsets survive a restart");

    let found = s
        .select_series(&t, &[Matcher::equal("__name__", "temp")])
        .expect("select");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].labels, temp);
    let samples = s.samples(found[0].id, i64::MIN, i64::MAX).expect("samples");
    assert_eq!(
        samples,
        vec![
            Sample::new(-5, f64::from_bits(0x7ff0_0000_0000_0002)),
            Sample::new(2000, 21.5)
        ],
        "bit-exact, sorted by time, nothing from the duplicates"
    );
    assert_eq!(s.samples(found[0].id, 0, 1999).expect("samples"), vec![]);

    let by_device = s
        .select_series(&t, &[Matcher::equal("device", "d1")])
        .expect("select");
    assert_eq!(by_device.len(), 2);
    let re = s
        .select_series(
            &t,
            &[
                Matcher::regex("site", "s.").expect("re"),
                Matcher::not_equal("__name__", "hum"),
            ],
        )
        .expect("select");
    assert_eq!(re.len(), 1);
    assert_eq!(re[0].labels, temp);

    assert_eq!(
        s.label_names(&t).expect("names"),
        ["__name__", "device", "site"]
    );
    assert_eq!(s.label_values(&t, "site").expect("values"), ["s1", "s2"]);
    assert_eq!(
        s.label_values(&t, "__name__").expect("values"),
        ["hum", "temp"]
    );
    let other = Tenant::new("other").expect("tenant");
    assert!(s.label_names(&other).expect("names").is_empty());
    assert!(
        s.select_series(&other, &[Matcher::equal("__name__", "temp")])
            .expect("select")
            .is_empty()
    );
}

fn last_write_wins_for_a_timestamp_and_new_epoch_is_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), quiet()).expect("open");
    let l = labels("m", &[("a", "1")]);
    write(&s, batch(5, vec![(l.clone(), vec![Sample::new(10, 1.0)])]));
    let mut b = batch(2, vec![(l.clone(), vec![Sample::new(10, 2.0)])]);
    b.epoch = 10; // a fresh agent buffer starts a new epoch with low sequences
    assert!(matches!(write(&s, b), AckOutcome::Stored { .. }));
    let id = SeriesId::of(&Tenant::default(), &l);
    assert_eq!(
        s.samples(id, 0, 100).expect("samples"),
        vec![Sample::new(10, 2.0)]
    );
}

fn label_listing_handles_names_that_prefix_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), quiet()).expect("open");
    write(
        &s,
        batch(
            1,
            vec![
                (
                    labels("m", &[("a", "x"), ("ab", "y"), ("abc", "z")]),
                    vec![Sample::new(1, 1.0)],
                ),
                (
                    labels("m", &[("a", "xy"), ("ab", "y")]),
                    vec![Sample::new(1, 1.0)],
                ),
            ],
        ),
    );
    let t = Tenant::default();
    assert_eq!(
        s.label_names(&t).expect("names"),
        ["__name__", "a", "ab", "abc"]
    );
    assert_eq!(s.label_values(&t, "a").expect("values"), ["x", "xy"]);
    assert_eq!(s.label_values(&t, "ab").expect("values"), ["y"]);
}

fn chunk_count(s: &Storage, id: SeriesId) -> usize {
    s.ks.chunks
        .overlapping(&Tenant::default(), i64::MIN, i64::MAX)
        .iter()
        .map(|p| p.prefix(id.0.to_be_bytes()).count())
        .sum()
}

fn compaction_merges_a_day_into_one_block_and_later_writes_still_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), quiet()).expect("open");
    let l = labels("m", &[("a", "1")]);
    let id = SeriesId::of(&Tenant::default(), &l);
    let day = 19_000 * keys::DAY_MS;
    // Ten batches, out of order, with overwrites, and one crossing midnight.
    for i in 0..10u64 {
        let ts = day + (9 - i as i64) * 1000;
        let samples = vec![
            Sample::new(ts, i as f64),
            Sample::new(day + 500, 100.0 + i as f64),
        ];
        write_flushed(&s, batch(i + 1, vec![(l.clone(), samples)]));
    }
    write_flushed(
        &s,
        batch(
            11,
            vec![(
                l.clone(),
                vec![Sample::new(day - 1, -1.0), Sample::new(day + 1, 1.5)],
            )],
        ),
    );
    let before = s.samples(id, i64::MIN, i64::MAX).expect("read");
    assert_eq!(before.len(), 13);
    assert_eq!(
        before[0],
        Sample::new(day - 1, -1.0),
        "the midnight-crossing chunk was split"
    );
    assert!(
        before.contains(&Sample::new(day + 500, 109.0)),
        "the last write wins"
    );
    assert_eq!(chunk_count(&s, id), 12);

    let opts = CompactionOptions {
        merge_after_chunks: 2,
        seal_after: Duration::from_secs(1_000_000_000),
        ..CompactionOptions::default()
    };
    let queue = s.shared.queue.clone().expect("queue");
    assert_eq!(
        compactor::pass(&s.ks, &queue, &opts, Clock::system().now_ms()).expect("pass"),
        1
    );
    // The day with 11 chunks is one block now; the day before keeps its single chunk.
    assert_eq!(chunk_count(&s, id), 2);
    assert_eq!(s.samples(id, i64::MIN, i64::MAX).expect("read"), before);
    assert_eq!(
        compactor::pass(&s.ks, &queue, &opts, Clock::system().now_ms()).expect("pass"),
        0,
        "nothing left dirty"
    );

    // A later write still beats the merged block.
    write(
        &s,
        batch(12, vec![(l.clone(), vec![Sample::new(day + 500, 7.0)])]),
    );
    let after = s.samples(id, day + 500, day + 500).expect("read");
    assert_eq!(after, vec![Sample::new(day + 500, 7.0)]);
    drop(queue);
    drop(s);
    // And everything survives a restart.
    let s = Storage::open(dir.path(), quiet()).expect("reopen");
    assert_eq!(s.samples(id, day + 500, day + 500).expect("read"), after);
}

fn a_corrupt_chunk_is_rejected_and_the_rest_of_the_batch_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), quiet()).expect("open");
    let good = labels("m", &[("a", "good")]);
    let bad = labels("m", &[("a", "bad")]);
    let mut b = batch(
        1,
        vec![
            (good.clone(), vec![Sample::new(1, 1.0)]),
            (bad.clone(), vec![Sample::new(1, 2.0)]),
        ],
    );
    let last = b.series[1].chunk.len() - 1;
    b.series[1].chunk[last] ^= 0xFF;
    let AckOutcome::Stored {
        samples: 1,
        rejected_series: 1,
        rejection: Some(why),
    } = write(&s, b)
    else {
        panic!("one series stored, one refused");
    };
    assert!(
        why.contains(r#"m{a="bad"}"#) && why.contains("damaged chunk"),
        "{why}"
    );
    let t = Tenant::default();
    assert_eq!(
        s.samples(SeriesId::of(&t, &good), 0, 10)
            .expect("read")
            .len(),
        1
    );
    assert!(
        s.select_series(&t, &[Matcher::equal("a", "bad")])
            .expect("select")
            .is_empty()
    );
}

fn limits_refuse_only_the_offending_series() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = quiet();
    options.limits = Limits {
        max_labels_per_series: 3,
        max_label_name_bytes: 8,
        max_label_value_bytes: 8,
        max_series_per_tenant: 3,
    };
    let s = Storage::open(dir.path(), options.clone()).expect("open");
    let ok = labels("m", &[("a", "1")]);
    let outcome = write(
        &s,
        batch(
            1,
            vec![
                (ok.clone(), vec![Sample::new(1, 1.0)]),
                (
                    labels("m", &[("a", "1"), ("b", "2"), ("c", "3")]),
                    vec![Sample::new(1, 1.0)],
                ),
                (
                    labels("m", &[("averyverylongname", "1")]),
                    vec![Sample::new(1, 1.0)],
                ),
                (
                    labels("m", &[("a", "a value too long")]),
                    vec![Sample::new(1, 1.0)],
                ),
                (labels("m", &[("a", "2")]), vec![Sample::new(1, 1.0)]),
                (labels("m", &[("a", "3")]), vec![Sample::new(1, 1.0)]),
                (labels("m", &[("a", "4")]), vec![Sample::new(1, 1.0)]),
            ],
        ),
    );
    let AckOutcome::Stored {
        samples: 3,
        rejected_series: 4,
        rejection: Some(why),
    } = outcome
    else {
        panic!("three stored, four refused: {outcome:?}");
    };
    assert!(why.contains("4 labels, more than the limit of 3"), "{why}");
    // The limit counts existing series across restarts; old series keep being written.
    drop(s);
    let s = Storage::open(dir.path(), options).expect("reopen");
    let out = write(
        &s,
        batch(
            2,
            vec![
                (ok.clone(), vec![Sample::new(2, 2.0)]),
                (labels("m", &[("a", "5")]), vec![Sample::new(2, 2.0)]),
            ],
        ),
    );
    let AckOutcome::Stored {
        samples: 1,
        rejected_series: 1,
        rejection: Some(why),
    } = out
    else {
        panic!("the old series is written, the new one refused: {out:?}");
    };
    assert!(
        why.contains("series_limit") || why.contains("the limit"),
        "{why}"
    );
    let id = SeriesId::of(&Tenant::default(), &ok);
    assert_eq!(s.samples(id, 0, 10).expect("read").len(), 2);
}

fn retention_drops_whole_partitions_per_tenant_and_refuses_old_samples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = Tenant::new("acme").expect("tenant");
    let mut options = quiet();
    options.retention = Retention {
        default: Some(Duration::from_secs(30 * 86_400)),
        per_tenant: [(acme.clone(), None)].into(),
    };
    let s = Storage::open(dir.path(), options.clone()).expect("open");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let old = now - 20 * 86_400_000; // within 30 days now, past it 20 days later
    let l = labels("m", &[("a", "1")]);
    for (seq, tenant) in [(1, Tenant::default()), (2, acme.clone())] {
        let mut b = batch(
            seq,
            vec![(
                l.clone(),
                vec![Sample::new(old, 1.0), Sample::new(now, 2.0)],
            )],
        );
        b.tenant = tenant;
        assert!(matches!(
            write_flushed(&s, b),
            AckOutcome::Stored { samples: 2, .. }
        ));
    }
    let queue = s.shared.queue.clone().expect("queue");
    let retention = options.retention.clone();
    // Today nothing is past retention.
    assert_eq!(
        compactor::enforce_retention(&s.ks, &queue, &retention, now).expect("pass"),
        0
    );
    // Twenty days on, the default tenant's old partition goes; acme keeps everything.
    let later = now + 20 * 86_400_000;
    assert!(compactor::enforce_retention(&s.ks, &queue, &retention, later).expect("pass") >= 1);
    let default_id = SeriesId::of(&Tenant::default(), &l);
    let acme_id = SeriesId::of(&acme, &l);
    assert_eq!(
        s.samples(default_id, i64::MIN, i64::MAX).expect("read"),
        vec![Sample::new(now, 2.0)]
    );
    assert_eq!(
        s.samples(acme_id, i64::MIN, i64::MAX).expect("read").len(),
        2
    );

    // A sample from 1970 is refused for the default tenant, accepted for acme (forever).
    let ancient = vec![(l.clone(), vec![Sample::new(0, 3.0)])];
    let out = write(&s, batch(3, ancient.clone()));
    let AckOutcome::Stored {
        samples: 0,
        rejected_series: 1,
        rejection: Some(why),
    } = out
    else {
        panic!("refused: {out:?}");
    };
    assert!(why.contains("retention"), "{why}");
    let mut b = batch(4, ancient);
    b.tenant = acme.clone();
    assert!(matches!(
        write(&s, b),
        AckOutcome::Stored { samples: 1, .. }
    ));
    drop(queue);
    drop(s);
    // Partitions are found again on open.
    let s = Storage::open(dir.path(), options).expect("reopen");
    assert_eq!(
        s.samples(acme_id, i64::MIN, i64::MAX).expect("read").len(),
        3
    );
}

fn flush_settles_everything_and_keeps_the_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), quiet()).expect("open");
    let l = labels("m", &[("a", "1")]);
    for i in 0..20u64 {
        let ts = 1_700_000_000_000 + i as i64 * 10_000;
        write(
            &s,
            batch(i + 1, vec![(l.clone(), vec![Sample::new(ts, i as f64)])]),
        );
    }
    let opts = CompactionOptions {
        seal_after: Duration::ZERO,
        ..CompactionOptions::default()
    };
    assert_eq!(s.compact_now(&opts).expect("compact"), 1);
    s.flush().expect("flush");
    let id = SeriesId::of(&Tenant::default(), &l);
    assert_eq!(s.samples(id, i64::MIN, i64::MAX).expect("read").len(), 20);
    assert_eq!(chunk_count(&s, id), 1);
    drop(s);
    let s = Storage::open(dir.path(), quiet()).expect("reopen");
    assert_eq!(s.samples(id, i64::MIN, i64::MAX).expect("read").len(), 20);
}

/// Bytes of the WAL's segment files.
fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("wal"))
        .expect("wal dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A flush that leaves nothing in the head lets the whole WAL go (it starts a new segment),
/// rather than keeping a partly filled segment of records fjall already holds.
fn a_flush_releases_the_whole_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Tenant::default();
    let l = labels("m", &[("a", "1")]);
    let s = Storage::open(dir.path(), quiet()).expect("open");
    for round in 0..4i64 {
        let samples = (0..40_000)
            .map(|i| Sample::new(1_700_000_000_000 + (round * 40_000 + i) * 1000, i as f64))
            .collect();
        s.submit_samples(SampleBatch {
            tenant: t.clone(),
            series: vec![(l.clone(), samples)],
        })
        .expect("queued")
        .blocking_recv()
        .expect("answered")
        .expect("stored");
    }
    assert!(
        wal_bytes(dir.path()) > 2 << 20,
        "160,000 samples of 16 bytes are logged"
    );
    s.flush().expect("flush");
    assert!(
        wal_bytes(dir.path()) < 64 << 10,
        "{} bytes of WAL left",
        wal_bytes(dir.path())
    );
    let id = SeriesId::of(&t, &l);
    drop(s);
    let s = Storage::open(dir.path(), quiet()).expect("reopen");
    assert_eq!(
        s.samples(id, i64::MIN, i64::MAX).expect("read").len(),
        160_000
    );
}

/// Files in a keyspace's table folder, as on disk.
/// Table files of `ks`; a folder that cannot be read fails the test (it would count as 0).
fn table_files(ks: &fjall::Keyspace) -> usize {
    let dir = ks.path().join("tables");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .count()
}

fn flush_leaves_no_replaced_table_files_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), quiet()).expect("open");
    let l = labels("m", &[("a", "1")]);
    // Three generations of tables: every flush rotates and compacts what came before.
    for round in 0..3u64 {
        for i in 0..50u64 {
            let seq = round * 50 + i + 1;
            let ts = 1_700_000_000_000 + seq as i64 * 10_000;
            write(
                &s,
                batch(seq, vec![(l.clone(), vec![Sample::new(ts, seq as f64)])]),
            );
        }
        s.flush().expect("flush");
    }
    let opts = CompactionOptions {
        seal_after: Duration::ZERO,
        ..CompactionOptions::default()
    };
    assert_eq!(s.compact_now(&opts).expect("compact"), 1);
    s.flush().expect("flush");
    let mut keyspaces = vec![
        s.ks.series.clone(),
        s.ks.postings.clone(),
        s.ks.meta.clone(),
    ];
    for (tenant, index) in s.ks.chunks.all() {
        keyspaces.extend(s.ks.chunks.get(&tenant, index));
    }
    for ks in keyspaces {
        assert_eq!(
            table_files(&ks),
            ks.table_count(),
            "keyspace {:?} keeps files of replaced tables",
            ks.path()
        );
    }
    let id = SeriesId::of(&Tenant::default(), &l);
    assert_eq!(s.samples(id, i64::MIN, i64::MAX).expect("read").len(), 150);
}

fn series_left_without_data_by_retention_leave_the_index_and_can_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = quiet();
    options.retention = Retention {
        default: Some(Duration::from_secs(30 * 86_400)),
        per_tenant: Default::default(),
    };
    options.limits.max_series_per_tenant = 2;
    let s = Storage::open(dir.path(), options.clone()).expect("open");
    let t = Tenant::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let old = now - 20 * 86_400_000;
    let gone = labels("m", &[("dev", "gone")]);
    let kept = labels("m", &[("dev", "kept")]);
    let out = write_flushed(
        &s,
        batch(
            1,
            vec![
                (gone.clone(), vec![Sample::new(old, 1.0)]),
                (
                    kept.clone(),
                    vec![Sample::new(old, 1.0), Sample::new(now, 2.0)],
                ),
            ],
        ),
    );
    assert!(
        matches!(out, AckOutcome::Stored { samples: 3, .. }),
        "{out:?}"
    );
    assert_eq!(s.label_values(&t, "dev").expect("values"), ["gone", "kept"]);

    let queue = s.shared.queue.clone().expect("queue");
    let later = now + 20 * 86_400_000;
    assert!(
        compactor::enforce_retention(&s.ks, &queue, &options.retention, later).expect("pass") >= 1
    );
    // Only the series that kept a sample stays listed and selectable.
    assert_eq!(s.label_values(&t, "dev").expect("values"), ["kept"]);
    let all = s
        .select_series(&t, &[Matcher::equal("__name__", "m")])
        .expect("select");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].labels, kept);

    // The tenant's series count went down with it: under the limit of two series, the
    // removed one comes back (it would be refused if it were still counted), and then a
    // third is refused.
    let out = write(
        &s,
        batch(2, vec![(gone.clone(), vec![Sample::new(now, 4.0)])]),
    );
    assert!(
        matches!(
            out,
            AckOutcome::Stored {
                samples: 1,
                rejected_series: 0,
                ..
            }
        ),
        "{out:?}"
    );
    let fresh = labels("m", &[("dev", "fresh")]);
    let out = write(&s, batch(3, vec![(fresh, vec![Sample::new(now, 3.0)])]));
    assert!(
        matches!(
            out,
            AckOutcome::Stored {
                rejected_series: 1,
                ..
            }
        ),
        "{out:?}"
    );
    drop(queue);
    drop(s);
    // Reopened, the index holds exactly the two live series with their postings.
    let s = Storage::open(dir.path(), options).expect("reopen");
    assert_eq!(s.label_values(&t, "dev").expect("values"), ["gone", "kept"]);
    let id = SeriesId::of(&t, &gone);
    assert_eq!(
        s.samples(id, i64::MIN, i64::MAX).expect("read"),
        vec![Sample::new(now, 4.0)]
    );
}

fn every_matcher_and_listing_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), quiet()).expect("open");
    let other = Tenant::new("other").expect("tenant");
    write(
        &s,
        batch(
            1,
            vec![
                (
                    labels("temp", &[("site", "s1"), ("dev", "a")]),
                    vec![Sample::new(1, 1.0)],
                ),
                (
                    labels("temp", &[("site", "s2"), ("dev", "b")]),
                    vec![Sample::new(1, 2.0)],
                ),
                (labels("hum", &[("site", "s1")]), vec![Sample::new(1, 3.0)]),
            ],
        ),
    );
    let mut b = batch(
        2,
        vec![(labels("temp", &[("site", "x9")]), vec![Sample::new(1, 4.0)])],
    );
    b.tenant = other.clone();
    write(&s, b);
    let t = Tenant::default();
    let select = |matchers: &[Matcher]| {
        let mut out: Vec<String> = s
            .select_series(&t, matchers)
            .expect("select")
            .into_iter()
            .map(|r| r.labels.to_string())
            .collect();
        out.sort();
        out
    };
    let name = |v: &str| Matcher::equal("__name__", v);
    assert_eq!(
        select(&[name("temp"), Matcher::equal("site", "s1")]).len(),
        1
    );
    assert_eq!(
        select(&[name("temp"), Matcher::not_equal("site", "s1")]),
        vec![labels("temp", &[("site", "s2"), ("dev", "b")]).to_string()]
    );
    let re = |n: &str, p: &str| Matcher::regex(n, p).expect("regex");
    let nre = |n: &str, p: &str| Matcher::not_regex(n, p).expect("regex");
    assert_eq!(select(&[re("site", "s.*")]).len(), 3);
    assert_eq!(select(&[re("dev", "a|b")]).len(), 2);
    assert_eq!(select(&[name("temp"), nre("dev", "a")]).len(), 1);
    assert_eq!(
        select(&[re("__name__", ".+")]).len(),
        3,
        "no other tenant's series"
    );
    assert_eq!(select(&[Matcher::equal("site", "x9")]).len(), 0);
    assert_eq!(select(&[name("temp"), Matcher::equal("dev", "")]).len(), 0);
    assert_eq!(select(&[name("hum"), Matcher::equal("dev", "")]).len(), 1);
    assert_eq!(
        s.label_names(&t).expect("names"),
        vec!["__name__", "dev", "site"]
    );
    assert_eq!(
        s.label_values(&t, "site").expect("values"),
        vec!["s1", "s2"]
    );
    assert_eq!(s.label_values(&other, "site").expect("values"), vec!["x9"]);
    assert_eq!(
        s.label_values(&t, "nope").expect("values"),
        Vec::<String>::new()
    );
}

/// Every behaviour test above, once in clear and once encrypted at rest.
/// Sample batches (the HTTP ingest APIs' path) are logged as they are: after a crash that
/// left them only in the WAL (no head flush on stop), a reopen replays them into the head and
/// every sample, series and label value is back; series sharing label values (one dictionary
/// entry each when encrypted) are all found by every matcher.
fn sample_batches_survive_a_crash_through_the_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Tenant::default();
    let series = |host: &str| labels("cpu", &[("host", host), ("mode", "user")]);
    let crash = || StorageOptions {
        flush_head_on_stop: false,
        ..quiet()
    };
    {
        let s = Storage::open(dir.path(), crash()).expect("open");
        for round in 0..3i64 {
            let batch = SampleBatch {
                tenant: t.clone(),
                series: ["a", "b", "c"]
                    .iter()
                    .map(|h| {
                        let samples = (0..4)
                            .map(|i| Sample::new(round * 100 + i * 10, (round * 4 + i) as f64))
                            .collect();
                        (series(h), samples)
                    })
                    .collect(),
            };
            let out = s
                .submit_samples(batch)
                .expect("queued")
                .blocking_recv()
                .expect("answered")
                .expect("stored");
            assert_eq!(
                out,
                AckOutcome::Stored {
                    samples: 12,
                    rejected_series: 0,
                    rejection: None
                }
            );
        }
    }
    let s = Storage::open(dir.path(), crash()).expect("reopen");
    let found = s
        .select_series(&t, &[Matcher::regex("mode", "us.*").expect("re")])
        .expect("select");
    assert_eq!(found.len(), 3);
    for f in &found {
        let samples = s.samples(f.id, i64::MIN, i64::MAX).expect("samples");
        let expected: Vec<Sample> = (0..3i64)
            .flat_map(|r| (0..4).map(move |i| Sample::new(r * 100 + i * 10, (r * 4 + i) as f64)))
            .collect();
        assert_eq!(samples, expected, "{}", f.labels);
    }
    assert_eq!(s.label_values(&t, "host").expect("values"), ["a", "b", "c"]);
    assert_eq!(s.label_values(&t, "mode").expect("values"), ["user"]);
    assert_eq!(
        s.label_names(&t).expect("names"),
        ["__name__", "host", "mode"]
    );
}

/// `has_samples` answers from the head and from chunk headers, and decodes a chunk only when
/// it spans the whole range, where a gap can hold no sample.
fn has_samples_sees_the_head_chunks_and_gaps_inside_a_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Tenant::default();
    let s = Storage::open(dir.path(), quiet()).expect("open");
    let l = labels("m", &[("k", "v")]);
    let id = SeriesId::of(&t, &l);
    write_flushed(
        &s,
        batch(
            1,
            vec![(
                l.clone(),
                vec![Sample::new(0, 1.0), Sample::new(10_000, 2.0)],
            )],
        ),
    );
    write(&s, batch(2, vec![(l, vec![Sample::new(20_000, 3.0)])]));
    let has = |a, b| s.has_samples(&t, id, a, b).expect("read");
    assert!(!has(2_000, 8_000), "a gap inside one chunk");
    assert!(has(5_000, 10_000), "the chunk's last sample");
    assert!(has(-5, 0), "the chunk's first sample");
    assert!(has(19_000, 21_000), "the head");
    assert!(!has(11_000, 19_999));
    assert!(!has(30_000, 40_000));
    assert!(!has(10_000, 0), "an empty range");
    assert!(
        !s.has_samples(&Tenant::new("other").expect("tenant"), id, 0, 30_000)
            .expect("read")
    );
}

macro_rules! in_clear_and_encrypted {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn in_clear() {
                super::$name();
            }

            #[test]
            fn encrypted() {
                super::encrypted(super::$name);
            }
        }
    )*};
}

in_clear_and_encrypted!(
    every_matcher_and_listing_works,
    stores_reads_and_deduplicates_across_restart,
    last_write_wins_for_a_timestamp_and_new_epoch_is_applied,
    label_listing_handles_names_that_prefix_each_other,
    compaction_merges_a_day_into_one_block_and_later_writes_still_win,
    a_corrupt_chunk_is_rejected_and_the_rest_of_the_batch_is_stored,
    limits_refuse_only_the_offending_series,
    retention_drops_whole_partitions_per_tenant_and_refuses_old_samples,
    flush_settles_everything_and_keeps_the_data,
    flush_leaves_no_replaced_table_files_behind,
    series_left_without_data_by_retention_leave_the_index_and_can_come_back,
    sample_batches_survive_a_crash_through_the_wal,
    has_samples_sees_the_head_chunks_and_gaps_inside_a_chunk,
    a_flush_releases_the_whole_wal,
);

#[test]
fn encrypted_and_plain_storage_never_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Storage::open(dir.path(), quiet()).expect("plain, empty"));
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let e = Encryption::from_keyring(&ring).expect("keys");
    let sealed = || StorageOptions {
        encryption: Some(e.clone()),
        ..quiet()
    };
    // An empty plain store may become encrypted.
    let s = Storage::open(dir.path(), sealed()).expect("encrypted");
    write(
        &s,
        batch(
            1,
            vec![(labels("m", &[("a", "1")]), vec![Sample::new(1, 1.0)])],
        ),
    );
    drop(s);
    let err = Storage::open(dir.path(), quiet()).err().expect("no keys");
    assert!(err.to_string().contains("a master key is needed"), "{err}");

    let plain = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(plain.path(), quiet()).expect("plain");
    write(
        &s,
        batch(
            1,
            vec![(labels("m", &[("a", "1")]), vec![Sample::new(1, 1.0)])],
        ),
    );
    drop(s);
    let err = Storage::open(plain.path(), sealed()).err().expect("mixing");
    assert!(err.to_string().contains("refusing to mix"), "{err}");
}

#[test]
fn rotated_keys_keep_old_data_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let mut ring =
        crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let options = |ring: &crypt::Keyring| StorageOptions {
        encryption: Some(Encryption::from_keyring(ring).expect("keys")),
        ..quiet()
    };
    let old = labels("m", &[("a", "old")]);
    let s = Storage::open(dir.path(), options(&ring)).expect("open");
    write(&s, batch(1, vec![(old.clone(), vec![Sample::new(1, 1.0)])]));
    drop(s);
    ring.rotate().expect("rotate");
    let s = Storage::open(dir.path(), options(&ring)).expect("reopen after rotation");
    let new = labels("m", &[("a", "new")]);
    write(&s, batch(2, vec![(new.clone(), vec![Sample::new(2, 2.0)])]));
    let t = Tenant::default();
    for (l, sample) in [(old, Sample::new(1, 1.0)), (new, Sample::new(2, 2.0))] {
        let id = SeriesId::of(&t, &l);
        assert_eq!(s.samples(id, 0, 10).expect("samples"), vec![sample], "{l}");
    }
    assert_eq!(s.label_values(&t, "a").expect("values"), vec!["new", "old"]);
    s.compact_now(&CompactionOptions {
        seal_after: Duration::ZERO,
        ..CompactionOptions::default()
    })
    .expect("compact");
    // The keyring read back from disk holds every key, old and new.
    let first = crypt::Keyring::open(keys.path(), &master).expect("ring");
    drop(s);
    let s = Storage::open(dir.path(), options(&first)).expect("reopen");
    assert_eq!(
        s.samples(SeriesId::of(&t, &labels("m", &[("a", "old")])), 0, 10)
            .expect("samples")
            .len(),
        1
    );
}

#[test]
fn encrypted_files_hold_no_label_text_or_raw_values() {
    let secret_value = 271_828.182_845_9_f64;
    let scan = |dir: &std::path::Path| -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).expect("read");
                let needles: [&[u8]; 4] = [
                    b"zq_secret_label",
                    b"zq_secret_value_91823",
                    &secret_value.to_le_bytes(),
                    &secret_value.to_be_bytes(),
                ];
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == n) {
                        found.push(format!("{} holds {:?}", path.display(), n));
                    }
                }
            }
        }
        found
    };
    let run = |options: StorageOptions| {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path(), options).expect("open");
        let l = labels("zq_metric", &[("zq_secret_label", "zq_secret_value_91823")]);
        write(&s, batch(1, vec![(l, vec![Sample::new(1, secret_value)])]));
        drop(s);
        let found = scan(dir.path());
        (dir, found)
    };
    let (_plain, found) = run(quiet());
    assert!(
        !found.is_empty(),
        "the scan finds clear text in a plain store"
    );
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let (_sealed, found) = run(StorageOptions {
        encryption: Some(Encryption::from_keyring(&ring).expect("keys")),
        ..quiet()
    });
    assert!(found.is_empty(), "{found:#?}");
}

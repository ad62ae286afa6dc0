//! Compaction and flushes: a day merged into one block, a settled store, the WAL and replaced
//! table files released.

use super::*;

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

in_clear_and_encrypted!(
    compaction_merges_a_day_into_one_block_and_later_writes_still_win,
    flush_settles_everything_and_keeps_the_data,
    a_flush_releases_the_whole_wal,
    flush_leaves_no_replaced_table_files_behind,
);

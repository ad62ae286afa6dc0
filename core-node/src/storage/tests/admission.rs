//! What storage refuses and removes: damaged chunks, limits, retention (partitions dropped,
//! old samples refused, series left without data), and sample batches surviving a crash.

use super::*;

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

in_clear_and_encrypted!(
    a_corrupt_chunk_is_rejected_and_the_rest_of_the_batch_is_stored,
    limits_refuse_only_the_offending_series,
    retention_drops_whole_partitions_per_tenant_and_refuses_old_samples,
    series_left_without_data_by_retention_leave_the_index_and_can_come_back,
    sample_batches_survive_a_crash_through_the_wal,
);

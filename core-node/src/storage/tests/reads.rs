//! Writes read back: deduplication across restarts, the last write winning, label listings,
//! every matcher, and `has_samples` over the head and chunks.

use super::*;

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

in_clear_and_encrypted!(
    stores_reads_and_deduplicates_across_restart,
    last_write_wins_for_a_timestamp_and_new_epoch_is_applied,
    label_listing_handles_names_that_prefix_each_other,
    every_matcher_and_listing_works,
    has_samples_sees_the_head_chunks_and_gaps_inside_a_chunk,
);

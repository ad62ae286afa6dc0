use super::*;
use protocols::wire::{AgentId, SeriesSamples};
use protocols::{Labels, Sample, SeriesId, Tenant};
use query::{DataSource, Matcher};

fn batch(seq: u64, series: Vec<(Labels, Vec<Sample>)>) -> WriteBatch {
    WriteBatch {
        agent_id: AgentId("a1".into()),
        epoch: 9,
        sequence: seq,
        tenant: Tenant::default(),
        series: series
            .into_iter()
            .map(|(labels, samples)| SeriesSamples { labels, samples })
            .collect(),
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

#[test]
fn stores_reads_and_deduplicates_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Tenant::default();
    let temp = labels("temp", &[("site", "s1"), ("device", "d1")]);
    let hum = labels("hum", &[("site", "s2"), ("device", "d1")]);
    {
        let s = Storage::open(dir.path(), StorageOptions::default()).expect("open");
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
                rejected_series: 0
            }
        );
        // Same (epoch, sequence) again: not applied, even with different content.
        let dup = write(
            &s,
            batch(1, vec![(temp.clone(), vec![Sample::new(3000, 1.0)])]),
        );
        assert_eq!(dup, AckOutcome::Duplicate);
    }
    let s = Storage::open(dir.path(), StorageOptions::default()).expect("reopen");
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

#[test]
fn last_write_wins_for_a_timestamp_and_new_epoch_is_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), StorageOptions::default()).expect("open");
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

#[test]
fn label_listing_handles_names_that_prefix_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Storage::open(dir.path(), StorageOptions::default()).expect("open");
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

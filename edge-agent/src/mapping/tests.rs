//! Mapper tests: rule selection, series naming, labels and rejections. Each decoder's own
//! details are tested in its module.

use super::*;

const NOW: i64 = 1_700_000_000_000;

fn rules(toml_text: &str) -> Vec<Rule> {
    #[derive(serde::Deserialize)]
    struct File {
        rules: Vec<RuleConfig>,
    }
    let file: File = toml::from_str(toml_text).expect("valid TOML");
    file.rules
        .into_iter()
        .map(|r| r.validate().expect("valid rule"))
        .collect()
}

fn mapper() -> Mapper {
    Mapper::new(vec![Rule::default()], 1024)
}

fn reason_with(m: &mut Mapper, topic: &str, payload: &[u8]) -> RejectReason {
    match m.map(topic.as_bytes(), payload, NOW) {
        Ok(mapped) => panic!("expected a rejection, got {mapped:?}"),
        Err(e) => e.reason(),
    }
}

fn reason(topic: &str, payload: &str) -> RejectReason {
    reason_with(&mut mapper(), topic, payload.as_bytes())
}

fn series(mapped: &Mapped) -> Vec<(String, i64, f64)> {
    let mut out: Vec<_> = mapped
        .samples
        .iter()
        .map(|s| (s.labels.to_string(), s.sample.timestamp_ms, s.sample.value))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn map(m: &mut Mapper, topic: &str, payload: &[u8]) -> Vec<(String, i64, f64)> {
    series(&m.map(topic.as_bytes(), payload, NOW).expect("maps"))
}

#[test]
fn plain_number_uses_receive_time_and_topic_labels() {
    let got = map(&mut mapper(), "plant-1/pump.7/temp-c", b"  21.5\n");
    assert_eq!(
        got,
        [(
            r#"temp_c{device="pump.7",site="plant-1"}"#.to_owned(),
            NOW,
            21.5
        )]
    );
}

#[test]
fn default_rule_fans_out_json_fields() {
    let got = map(
        &mut mapper(),
        "s1/d1/env",
        br#"{"temp": 21.5, "humid ity": 40, "ok": true, "off": false,
            "label": "x", "nested": {"a": 1}, "list": [1], "none": null,
            "ts": 1700000000123}"#,
    );
    let t = 1_700_000_000_123;
    let s = |name: &str, v| (format!(r#"{name}{{device="d1",site="s1"}}"#), t, v);
    assert_eq!(
        got,
        [
            s("env_humid_ity", 40.0),
            s("env_nested_a", 1.0),
            s("env_off", 0.0),
            s("env_ok", 1.0),
            s("env_temp", 21.5),
        ]
    );
}

#[test]
fn every_rejection_reason_of_the_default_rule() {
    use RejectReason::*;
    assert_eq!(reason("s/d/m", "twenty"), NotANumber);
    assert_eq!(reason("s/d/m", ""), NotANumber);
    assert_eq!(reason("s/d/m", r#""21.5""#), NotANumber);
    assert_eq!(reason("s/d/m", r#"{"v": 1"#), InvalidJson);
    assert_eq!(reason("s/d/m", "[1, 2]"), InvalidJson);
    assert_eq!(reason("s/d", "1"), TopicMismatch);
    assert_eq!(reason("s/d/m/x", "1"), TopicMismatch);
    assert_eq!(reason("s/d/", "1"), TopicMismatch);
    assert_eq!(reason("s/d/m", &"1".repeat(1025)), PayloadTooLarge);
    assert_eq!(
        reason("s/d/m", r#"{"v": 1, "ts": "yesterday"}"#),
        InvalidTimestamp
    );
    assert_eq!(
        reason("s/d/m", r#"{"ts": 5, "name": "x"}"#),
        NoNumericFields
    );
    assert_eq!(reason("s/d/m", "{}"), NoNumericFields);
    let long = "x".repeat(protocols::model::MAX_VALUE_BYTES + 1);
    assert_eq!(reason(&format!("s/{long}/m"), "1"), InvalidLabels);
    let mut m = mapper();
    assert_eq!(reason_with(&mut m, "s/d/m", &[0xff, 0xfe]), NotANumber);
    let err = m.map(&[0xff, b'/', b'd', b'/', b'm'], b"1", NOW);
    assert_eq!(err.map_err(|e| e.reason()).err(), Some(TopicMismatch));
}

#[test]
fn reason_discriminants_index_all() {
    // The ingest thread indexes its counters by `reason as usize`.
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
    }
    for (i, r) in SkipReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
    }
}

#[test]
fn an_empty_label_level_drops_the_label() {
    let got = map(&mut mapper(), "s1//temp", b"1");
    assert_eq!(got[0].0, r#"temp{site="s1"}"#);
}

#[test]
fn metric_level_is_sanitised() {
    let mut m = Mapper::new(rules("[[rules]]\ntopic = \"{metric}\""), 64);
    assert_eq!(map(&mut m, "9lives", b"1")[0].0, "_9lives{}");
}

#[test]
fn first_matching_rule_wins() {
    let mut m = Mapper::new(
        rules(
            r#"
            [[rules]]
            topic = "spBv1.0/#"
            decoder = "sparkplug"

            [[rules]]
            topic = "plant/{line}/{device}/json"
            decoder = "json"
            metric = "env"
            labels = { source = "plc" }

            [[rules]]
            topic = "plant/{line}/{device}/{metric}"
            decoder = "number"

            [[rules]]
            topic = "telegraf/{host}/#"
            decoder = "influx"
            "#,
        ),
        4096,
    );
    assert_eq!(
        map(&mut m, "plant/l1/d1/json", br#"{"temp": 1}"#),
        [(
            r#"env_temp{device="d1",line="l1",source="plc"}"#.to_owned(),
            NOW,
            1.0
        )]
    );
    assert_eq!(
        map(&mut m, "plant/l1/d1/temp", b"2"),
        [(r#"temp{device="d1",line="l1"}"#.to_owned(), NOW, 2.0)]
    );
    // The number rule does not read JSON: first match wins even when the decoder refuses.
    let mut reason_of = |topic: &str, payload: &[u8]| reason_with(&mut m, topic, payload);
    assert_eq!(
        reason_of("plant/l1/d1/env", b"{\"a\": 1}"),
        RejectReason::NotANumber
    );
    assert_eq!(reason_of("other/x", b"1"), RejectReason::TopicMismatch);
    assert_eq!(
        reason_of("spBv1.0/g1/NDATA/n1", b"\xff"),
        RejectReason::InvalidSparkplug
    );
    assert_eq!(
        map(&mut m, "telegraf/h1/cpu", b"cpu,host=ignored usage=5"),
        [(r#"cpu_usage{host="h1"}"#.to_owned(), NOW, 5.0)],
        "a topic capture wins over a tag of the same name"
    );
}

#[test]
fn rule_labels_win_over_payload_labels() {
    let mut m = Mapper::new(
        rules(
            r#"
            [[rules]]
            topic = "lp/#"
            decoder = "influx"
            metric = "edge"
            labels = { site = "s9" }
            "#,
        ),
        4096,
    );
    assert_eq!(
        map(&mut m, "lp/x", b"cpu,site=s1,core=0 value=5"),
        [(r#"edge_cpu{core="0",site="s9"}"#.to_owned(), NOW, 5.0)]
    );
}

#[test]
fn skipped_values_are_tallied_and_cost_nothing_else() {
    let mut m = mapper();
    let mapped = m
        .map(b"s/d/env", br#"{"a": 1, "b": "x", "c": [1], "": 3}"#, NOW)
        .expect("maps");
    assert_eq!(mapped.samples.len(), 2, "a, and the empty key as plain env");
    assert_eq!(mapped.tally.skipped[SkipReason::NotNumeric as usize], 2);

    let mut m = Mapper::new(rules("[[rules]]\ntopic = \"j\"\ndecoder = \"json\""), 64);
    let mapped = m.map(b"j", br#"{"": 3, "a": 1}"#, NOW).expect("maps");
    assert_eq!(series(&mapped), [("a{}".to_owned(), NOW, 1.0)]);
    assert_eq!(mapped.tally.skipped[SkipReason::InvalidName as usize], 1);
}

#[test]
fn decoders_never_panic_on_arbitrary_payloads() {
    let mut m = Mapper::new(
        rules(
            r#"
            [[rules]]
            topic = "spBv1.0/#"
            decoder = "sparkplug"
            [[rules]]
            topic = "j/{metric}"
            decoder = "json"
            [[rules]]
            topic = "i/#"
            decoder = "influx"
            [[rules]]
            topic = "{site}/{device}/{metric}"
            "#,
        ),
        4096,
    );
    let topics = ["spBv1.0/g/NDATA/n", "j/m", "i/x", "s/d/m"];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let alphabet = b" {}[]\":,=.0123456789abe\nti-";
    for i in 0..4000usize {
        let len = i % 200;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half of them from JSON and line-protocol characters, so the text decoders
                // get past their first checks.
                if i % 2 == 0 {
                    alphabet[(x % alphabet.len() as u64) as usize]
                } else {
                    x as u8
                }
            })
            .collect();
        let _ = m.map(topics[i % topics.len()].as_bytes(), &bytes, NOW);
    }
}

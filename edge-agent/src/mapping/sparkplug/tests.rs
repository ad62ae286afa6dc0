//! Sparkplug B decoder tests. Payloads are written field by field with a small protobuf
//! writer, from the field numbers of `sparkplug_b.proto`, not with the decoder's own structs,
//! so a wrong field number in the decoder cannot hide behind a matching encoder.

use super::super::rules::RuleConfig;
use super::*;

const NOW: i64 = 1_700_000_000_000;

/// A protobuf message under construction.
#[derive(Default, Clone)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u64, wire: u64) {
        self.varint(field << 3 | wire);
    }
    fn uint(mut self, field: u64, v: u64) -> Self {
        self.key(field, 0);
        self.varint(v);
        self
    }
    fn bytes(mut self, field: u64, b: &[u8]) -> Self {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn string(self, field: u64, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
    fn float(mut self, field: u64, v: f32) -> Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn double(mut self, field: u64, v: f64) -> Self {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn message(self, field: u64, m: &Pb) -> Self {
        self.bytes(field, &m.0)
    }
}

// Field numbers from sparkplug_b.proto.
const P_TIMESTAMP: u64 = 1;
const P_METRICS: u64 = 2;
const P_SEQ: u64 = 3;
const M_NAME: u64 = 1;
const M_ALIAS: u64 = 2;
const M_TIMESTAMP: u64 = 3;
const M_DATATYPE: u64 = 4;
const M_IS_NULL: u64 = 7;
const M_INT: u64 = 10;
const M_LONG: u64 = 11;
const M_FLOAT: u64 = 12;
const M_DOUBLE: u64 = 13;
const M_BOOL: u64 = 14;
const M_STRING: u64 = 15;
const M_DATASET: u64 = 17;

fn payload(seq: u64, metrics: &[Pb]) -> Vec<u8> {
    let mut p = Pb::default().uint(P_TIMESTAMP, NOW as u64 - 5000);
    for m in metrics {
        p = p.message(P_METRICS, m);
    }
    p.uint(P_SEQ, seq).0
}

fn rule(extra: &str) -> Rule {
    let text = format!("topic = \"spBv1.0/#\"\ndecoder = \"sparkplug\"\n{extra}");
    let config: RuleConfig = toml::from_str(&text).expect("valid TOML");
    config.validate().expect("valid rule")
}

struct Run {
    state: State,
    rule: Rule,
    tally: Tally,
}

impl Run {
    fn new() -> Self {
        Self::with_rule(rule(""))
    }
    fn with_rule(rule: Rule) -> Self {
        Self {
            state: State::default(),
            rule,
            tally: Tally::default(),
        }
    }
    fn send(
        &mut self,
        topic: &str,
        payload: &[u8],
    ) -> Result<Vec<(String, String, i64, f64)>, Rejection> {
        let levels: Vec<&str> = topic.split('/').collect();
        let decoded = self
            .state
            .decode(&levels, payload, &self.rule, NOW, &mut self.tally)?;
        let mut out: Vec<_> = decoded
            .into_iter()
            .map(|d| {
                let labels: Vec<String> =
                    d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (
                    d.name.unwrap_or_default(),
                    labels.join(","),
                    d.timestamp_ms,
                    d.value,
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
    fn ok(&mut self, topic: &str, payload: &[u8]) -> Vec<(String, String, i64, f64)> {
        self.send(topic, payload).expect("decodes")
    }
    fn skipped(&self, reason: SkipReason) -> u64 {
        self.tally.skipped[reason as usize]
    }
}

fn named(name: &str, alias: u64, datatype: u64) -> Pb {
    Pb::default()
        .string(M_NAME, name)
        .uint(M_ALIAS, alias)
        .uint(M_DATATYPE, datatype)
}

fn by_alias(alias: u64) -> Pb {
    Pb::default().uint(M_ALIAS, alias)
}

const NODE: &str = "group=g1,edge_node=n1";
const DEV: &str = "group=g1,edge_node=n1,device=d1";

#[test]
fn birth_teaches_aliases_and_data_uses_them() {
    let mut run = Run::new();
    let birth = payload(
        0,
        &[
            named("bdSeq", 0, 8).uint(M_LONG, 3),
            named("Inputs/Temp", 1, 10).double(M_DOUBLE, 20.5),
            named("Inputs/Count", 2, 3).uint(M_INT, 7),
        ],
    );
    let got = run.ok("spBv1.0/g1/NBIRTH/n1", &birth);
    let t = NOW - 5000;
    assert_eq!(
        got,
        [
            ("Inputs/Count".into(), NODE.into(), t, 7.0),
            ("Inputs/Temp".into(), NODE.into(), t, 20.5),
            ("bdSeq".into(), NODE.into(), t, 3.0),
        ]
    );
    // DATA by alias only, no datatype: both come from the BIRTH. Int32 -5 sign-extended.
    let data = payload(
        1,
        &[
            by_alias(1).double(M_DOUBLE, 21.0).uint(M_TIMESTAMP, 1234),
            by_alias(2).uint(M_INT, u64::from(-5i32 as u32)),
        ],
    );
    assert_eq!(
        run.ok("spBv1.0/g1/NDATA/n1", &data),
        [
            ("Inputs/Count".into(), NODE.into(), t, -5.0),
            ("Inputs/Temp".into(), NODE.into(), 1234, 21.0),
        ]
    );
    assert_eq!(run.tally.seq_gaps, 0);
}

#[test]
fn device_aliases_are_per_device_and_death_forgets_them() {
    let mut run = Run::new();
    run.ok(
        "spBv1.0/g1/NBIRTH/n1",
        &payload(0, &[named("n", 1, 10).double(M_DOUBLE, 1.0)]),
    );
    let dbirth = payload(1, &[named("Motor/RPM", 1, 7).uint(M_INT, 1500)]);
    assert_eq!(
        run.ok("spBv1.0/g1/DBIRTH/n1/d1", &dbirth),
        [("Motor/RPM".into(), DEV.into(), NOW - 5000, 1500.0)]
    );
    let ddata = payload(2, &[by_alias(1).uint(M_INT, 1600)]);
    assert_eq!(run.ok("spBv1.0/g1/DDATA/n1/d1", &ddata)[0].3, 1600.0);
    // The same alias on the node means the node's metric.
    let ndata = payload(3, &[by_alias(1).double(M_DOUBLE, 2.0)]);
    assert_eq!(run.ok("spBv1.0/g1/NDATA/n1", &ndata)[0].0, "n");
    // Another device has not been born.
    assert!(
        run.ok(
            "spBv1.0/g1/DDATA/n1/d2",
            &payload(4, &[by_alias(1).uint(M_INT, 1)])
        )
        .is_empty()
    );
    assert_eq!(run.skipped(SkipReason::UnknownAlias), 1);

    run.ok("spBv1.0/g1/DDEATH/n1/d1", &payload(5, &[]));
    assert!(
        run.ok(
            "spBv1.0/g1/DDATA/n1/d1",
            &payload(6, &[by_alias(1).uint(M_INT, 1)])
        )
        .is_empty()
    );
    assert_eq!(run.skipped(SkipReason::UnknownAlias), 2);
    // The node survives its device's death.
    assert_eq!(
        run.ok(
            "spBv1.0/g1/NDATA/n1",
            &payload(7, &[by_alias(1).double(M_DOUBLE, 3.0)])
        )
        .len(),
        1
    );

    // NDEATH (a last will, no seq) forgets the node; its payload need not even decode.
    assert!(run.ok("spBv1.0/g1/NDEATH/n1", b"\xff garbage").is_empty());
    assert!(
        run.ok(
            "spBv1.0/g1/NDATA/n1",
            &payload(8, &[by_alias(1).double(M_DOUBLE, 4.0)])
        )
        .is_empty()
    );
    assert_eq!(run.skipped(SkipReason::UnknownAlias), 3);
    assert_eq!(
        run.state.entries, 0,
        "forgotten tables give their entries back"
    );
    assert_eq!(run.tally.seq_gaps, 0);
}

#[test]
fn nbirth_forgets_device_tables() {
    let mut run = Run::new();
    run.ok("spBv1.0/g1/NBIRTH/n1", &payload(0, &[]));
    run.ok(
        "spBv1.0/g1/DBIRTH/n1/d1",
        &payload(1, &[named("x", 1, 10).double(M_DOUBLE, 1.0)]),
    );
    run.ok("spBv1.0/g1/NBIRTH/n1", &payload(0, &[]));
    assert!(
        run.ok(
            "spBv1.0/g1/DDATA/n1/d1",
            &payload(1, &[by_alias(1).double(M_DOUBLE, 1.0)])
        )
        .is_empty()
    );
    assert_eq!(run.skipped(SkipReason::UnknownAlias), 1);
}

#[test]
fn every_numeric_type_and_what_is_skipped() {
    let mut run = Run::new();
    let metrics = [
        named("i8", 1, 1).uint(M_INT, u64::from(-3i32 as u32)),
        named("i8_plain", 2, 1).uint(M_INT, 0xfd),
        named("i16", 3, 2).uint(M_INT, 0xffff_8000),
        named("i32", 4, 3).uint(M_INT, u64::from(i32::MIN as u32)),
        named("i64", 5, 4).uint(M_LONG, -7i64 as u64),
        named("u8", 6, 5).uint(M_INT, 255),
        named("u16", 7, 6).uint(M_INT, 65535),
        named("u32", 8, 7).uint(M_INT, u64::from(u32::MAX)),
        named("u32_long", 9, 7).uint(M_LONG, 4_000_000_000),
        named("u64", 10, 8).uint(M_LONG, 1 << 40),
        named("f", 11, 9).float(M_FLOAT, 1.5),
        named("d", 12, 10).double(M_DOUBLE, -2.25),
        named("b", 13, 11).uint(M_BOOL, 1),
        // Skipped: String, DateTime, DataSet, a null, a numeric type without a value.
        named("s", 14, 12).string(M_STRING, "hello"),
        named("when", 15, 13).uint(M_LONG, NOW as u64),
        named("table", 16, 16).message(M_DATASET, &Pb::default().uint(1, 2).string(2, "col")),
        named("gone", 17, 10).uint(M_IS_NULL, 1),
        named("empty", 18, 3),
    ];
    let got = run.ok("spBv1.0/g1/NBIRTH/n1", &payload(0, &metrics));
    let values: Vec<(&str, f64)> = got.iter().map(|g| (g.0.as_str(), g.3)).collect();
    assert_eq!(
        values,
        [
            ("b", 1.0),
            ("d", -2.25),
            ("f", 1.5),
            ("i16", -32768.0),
            ("i32", f64::from(i32::MIN)),
            ("i64", -7.0),
            ("i8", -3.0),
            ("i8_plain", -3.0),
            ("u16", 65535.0),
            ("u32", f64::from(u32::MAX)),
            ("u32_long", 4e9),
            ("u64", (1u64 << 40) as f64),
            ("u8", 255.0),
        ]
    );
    assert_eq!(run.skipped(SkipReason::NotNumeric), 5);
}

#[test]
fn without_any_datatype_the_value_field_decides() {
    let mut run = Run::new();
    let data = payload(
        0,
        &[
            Pb::default().string(M_NAME, "a").double(M_DOUBLE, 1.5),
            Pb::default().string(M_NAME, "b").uint(M_BOOL, 0),
            Pb::default().string(M_NAME, "c").uint(M_INT, 9),
            Pb::default().string(M_NAME, "d").string(M_STRING, "x"),
        ],
    );
    let got = run.ok("spBv1.0/g1/NDATA/n1", &data);
    let values: Vec<(&str, f64)> = got.iter().map(|g| (g.0.as_str(), g.3)).collect();
    assert_eq!(values, [("a", 1.5), ("b", 0.0), ("c", 9.0)]);
    assert_eq!(run.skipped(SkipReason::NotNumeric), 1);
}

#[test]
fn unknown_fields_are_tolerated() {
    let mut run = Run::new();
    // uuid (4), body (5) and an extension (99) on the payload; metadata (8), properties (9)
    // and is_historical (5) on the metric.
    let metric = named("t", 1, 10)
        .uint(5, 1)
        .message(8, &Pb::default().string(2, "text/plain"))
        .message(9, &Pb::default().string(1, "engUnit"))
        .double(M_DOUBLE, 4.5);
    let mut p = Pb::default()
        .string(4, "uuid")
        .bytes(5, b"body")
        .message(P_METRICS, &metric)
        .uint(P_SEQ, 0);
    p = p.uint(99, 1);
    assert_eq!(run.ok("spBv1.0/g1/NBIRTH/n1", &p.0)[0].3, 4.5);
}

#[test]
fn seq_gaps_are_counted() {
    let mut run = Run::new();
    run.ok("spBv1.0/g1/NBIRTH/n1", &payload(254, &[]));
    run.ok("spBv1.0/g1/NDATA/n1", &payload(255, &[]));
    run.ok("spBv1.0/g1/NDATA/n1", &payload(0, &[]));
    assert_eq!(run.tally.seq_gaps, 0, "seq wraps after 255");
    run.ok("spBv1.0/g1/DDATA/n1/d1", &payload(5, &[]));
    assert_eq!(run.tally.seq_gaps, 1);
    run.ok("spBv1.0/g1/NDATA/n1", &payload(6, &[]));
    assert_eq!(run.tally.seq_gaps, 1);
}

#[test]
fn filters_and_renames_apply_to_metric_names() {
    let mut run = Run::with_rule(rule(
        r#"exclude = ["Node Control", "bdSeq"]
           rename = { "Inputs/Temp" = "temperature" }"#,
    ));
    let birth = payload(
        0,
        &[
            named("bdSeq", 0, 8).uint(M_LONG, 3),
            named("Node Control/Rebirth", 1, 11).uint(M_BOOL, 0),
            named("Inputs/Temp", 2, 10).double(M_DOUBLE, 20.5),
        ],
    );
    let got = run.ok("spBv1.0/g1/NBIRTH/n1", &birth);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "temperature");
}

#[test]
fn commands_and_state_produce_nothing() {
    let mut run = Run::new();
    assert!(run.ok("spBv1.0/g1/NCMD/n1", b"anything").is_empty());
    assert!(run.ok("spBv1.0/g1/DCMD/n1/d1", b"anything").is_empty());
    assert!(
        run.ok("spBv1.0/STATE/host1", b"{\"online\":true}")
            .is_empty()
    );
}

#[test]
fn refusals() {
    let mut run = Run::new();
    let mut reason =
        |topic: &str, payload: &[u8]| run.send(topic, payload).err().map(|e| e.reason());
    use super::super::RejectReason::*;
    let ok = payload(0, &[]);
    assert_eq!(reason("spBv1.0/g1/NDATA", &ok), Some(TopicMismatch));
    assert_eq!(reason("spBv1.0/g1/NDATA/n1/d1", &ok), Some(TopicMismatch));
    assert_eq!(reason("spBv1.0/g1/DDATA/n1", &ok), Some(TopicMismatch));
    assert_eq!(reason("spBv1.0/g1/XDATA/n1", &ok), Some(TopicMismatch));
    assert_eq!(reason("spBv1.0//NDATA/n1", &ok), Some(TopicMismatch));
    assert_eq!(reason("spAv1.0/g1/NDATA/n1", &ok), Some(TopicMismatch));
    assert_eq!(
        reason("spBv1.0/g1/NDATA/n1", b"\xff\xff\xff"),
        Some(InvalidSparkplug)
    );
    assert_eq!(
        reason("spBv1.0/g1/NDATA/n1", b"21.5"),
        Some(InvalidSparkplug)
    );
    let truncated = &ok[..ok.len() - 1];
    assert_eq!(
        reason("spBv1.0/g1/NDATA/n1", truncated),
        Some(InvalidSparkplug)
    );
    let bad_ts = Pb::default().uint(P_TIMESTAMP, u64::MAX).0;
    assert_eq!(
        reason("spBv1.0/g1/NDATA/n1", &bad_ts),
        Some(InvalidTimestamp)
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut run = Run::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..2000usize {
        let bytes: Vec<u8> = (0..len % 97)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let kind = ["NBIRTH", "NDATA", "DBIRTH", "DDATA"][len % 4];
        let topic = if kind.starts_with('D') {
            format!("spBv1.0/g/{kind}/n/d")
        } else {
            format!("spBv1.0/g/{kind}/n")
        };
        let _ = run.send(&topic, &bytes);
    }
}

#[test]
fn state_is_bounded() {
    let mut run = Run::new();
    run.state.entries = MAX_ENTRIES - 2;
    let birth = payload(
        0,
        &[
            named("a", 1, 10).double(M_DOUBLE, 1.0),
            named("b", 2, 10).double(M_DOUBLE, 2.0),
        ],
    );
    // Both values are still mapped; only the first metric's name and alias fit.
    assert_eq!(run.ok("spBv1.0/g1/NBIRTH/n1", &birth).len(), 2);
    assert_eq!(run.skipped(SkipReason::AliasLimit), 1);
    assert_eq!(run.state.entries, MAX_ENTRIES);
    let data = payload(
        1,
        &[
            by_alias(1).double(M_DOUBLE, 1.0),
            by_alias(2).double(M_DOUBLE, 2.0),
        ],
    );
    assert_eq!(run.ok("spBv1.0/g1/NDATA/n1", &data).len(), 1);
    assert_eq!(run.skipped(SkipReason::UnknownAlias), 1);
}

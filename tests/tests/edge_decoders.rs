//! The edge agent's mapping rules and payload decoders, end to end: a real agent configured
//! with `[[rules]]`, a real core, `mosquitto_pub` publishing Sparkplug B protobuf, nested JSON
//! and InfluxDB line protocol, and the values read back with `/api/v1/query`. Bad input of
//! every decoder is counted and never costs a good sample.

use std::collections::BTreeMap;
use std::time::Duration;
use updraft_tests::*;

const RULES: &str = r#"
[[rules]]
topic = "spBv1.0/#"
decoder = "sparkplug"
exclude = ["bdSeq"]

[[rules]]
topic = "plant/{line}/{device}/telemetry"
decoder = "json"
metric = "plant"
include = ["sensors", "battery"]
exclude = ["sensors.debug"]
rename = { "sensors.temp" = "temperature" }
timestamp-field = "meta.time"
timestamp-format = "s"

[[rules]]
topic = "telegraf/{host}/#"
decoder = "influx"
timestamp-format = "ms"

[[rules]]
topic = "{site}/{device}/{metric}"
"#;

const T0_MS: i64 = 1_700_000_000_000;
const T0_S: f64 = 1_700_000_000.0;

/// A protobuf message written field by field from `sparkplug_b.proto`'s field numbers (the
/// test does not share the agent's message structs).
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
    fn uint(mut self, field: u64, v: u64) -> Self {
        self.varint(field << 3);
        self.varint(v);
        self
    }
    fn bytes(mut self, field: u64, b: &[u8]) -> Self {
        self.varint(field << 3 | 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn double(mut self, field: u64, v: f64) -> Self {
        self.varint(field << 3 | 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// Sparkplug B data types used here.
const INT32: u64 = 3;
const INT64: u64 = 4;
const UINT32: u64 = 7;
const DOUBLE: u64 = 10;
const STRING: u64 = 12;

/// `Payload.Metric`: name (1), alias (2), timestamp (3), datatype (4), then one value field.
struct M {
    name: Option<&'static str>,
    alias: u64,
    datatype: Option<u64>,
    ts_ms: Option<i64>,
    value: V,
}

enum V {
    /// `int_value` (10), for 8- to 32-bit types; signed values as two's complement.
    Int(u32),
    /// `long_value` (11).
    Long(u64),
    /// `double_value` (13).
    Double(f64),
    /// `string_value` (15).
    Str(&'static str),
}

impl M {
    fn birth(name: &'static str, alias: u64, datatype: u64, value: V) -> Self {
        Self {
            name: Some(name),
            alias,
            datatype: Some(datatype),
            ts_ms: Some(T0_MS),
            value,
        }
    }
    /// A DATA metric by alias only, as Sparkplug B edge nodes send them after the BIRTH.
    fn data(alias: u64, ts_ms: i64, value: V) -> Self {
        Self {
            name: None,
            alias,
            datatype: None,
            ts_ms: Some(ts_ms),
            value,
        }
    }
    fn encode(&self) -> Pb {
        let mut m = Pb::default();
        if let Some(name) = self.name {
            m = m.bytes(1, name.as_bytes());
        }
        m = m.uint(2, self.alias);
        if let Some(ts) = self.ts_ms {
            m = m.uint(3, ts as u64);
        }
        if let Some(t) = self.datatype {
            m = m.uint(4, t);
        }
        match self.value {
            V::Int(v) => m.uint(10, u64::from(v)),
            V::Long(v) => m.uint(11, v),
            V::Double(v) => m.double(13, v),
            V::Str(s) => m.bytes(15, s.as_bytes()),
        }
    }
}

/// `Payload`: timestamp (1), metrics (2), seq (3).
fn payload(seq: u64, metrics: &[M]) -> Vec<u8> {
    let mut p = Pb::default().uint(1, T0_MS as u64);
    for m in metrics {
        p = p.bytes(2, &m.encode().0);
    }
    p.uint(3, seq).0
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// One series' labels (with `__name__`) and raw samples as (Unix milliseconds, value).
type Series = (BTreeMap<String, String>, Vec<(i64, f64)>);

/// Waits until `selector` has exactly the series and raw samples of `expected`.
fn wait_for_series(core: &Core, selector: &str, expected: &[Series]) -> anyhow::Result<()> {
    let mut last = Vec::new();
    let found = wait_for(selector, Duration::from_secs(20), || {
        let mut series = core.raw_samples(selector, "1h", T0_S + 600.0).ok()?;
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        last = series
            .into_iter()
            .map(|s| (s.labels, s.points_ms))
            .collect::<Vec<_>>();
        (last == expected).then_some(())
    });
    if found.is_err() {
        anyhow::bail!("{selector}: expected {expected:?}\nlast seen {last:?}");
    }
    Ok(())
}

fn counter(agent: &Agent, name: &str, reason: &str) -> f64 {
    metric_sum(
        &agent.metrics(),
        name,
        Some(&format!("reason=\"{reason}\"")),
    )
}

#[test]
fn sparkplug_b_births_teach_aliases_and_data_arrives_by_alias() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let mut agent = Agent::start_with_config(work.path(), &certs, core.quic, RULES, &[])?;

    let node = "spBv1.0/g1/NBIRTH/n1";
    agent.publish_file(
        node,
        &payload(
            0,
            &[
                M::birth("bdSeq", 0, INT64, V::Long(1)),
                M::birth("Inputs/Temp", 1, DOUBLE, V::Double(20.5)),
                M::birth("Inputs/Count", 2, INT32, V::Int(-5i32 as u32)),
            ],
        ),
    )?;
    agent.publish_file(
        "spBv1.0/g1/DBIRTH/n1/d1",
        &payload(
            1,
            &[
                M::birth("Motor/RPM", 1, UINT32, V::Int(1500)),
                M::birth("Motor/Name", 2, STRING, V::Str("pump")),
            ],
        ),
    )?;
    let t1 = T0_MS + 1000;
    agent.publish_file(
        "spBv1.0/g1/NDATA/n1",
        &payload(
            2,
            &[
                M::data(1, t1, V::Double(21.0)),
                M::data(2, t1, V::Int(-6i32 as u32)),
            ],
        ),
    )?;
    agent.publish_file(
        "spBv1.0/g1/DDATA/n1/d1",
        &payload(3, &[M::data(1, t1, V::Int(1600))]),
    )?;
    // An alias no BIRTH taught costs only itself.
    let t2 = T0_MS + 2000;
    agent.publish_file(
        "spBv1.0/g1/NDATA/n1",
        &payload(
            4,
            &[
                M::data(99, t2, V::Double(1.0)),
                M::data(1, t2, V::Double(22.0)),
            ],
        ),
    )?;
    // After DDEATH the device's aliases are forgotten.
    agent.publish_file("spBv1.0/g1/DDEATH/n1/d1", &payload(5, &[]))?;
    let t3 = T0_MS + 3000;
    agent.publish_file(
        "spBv1.0/g1/DDATA/n1/d1",
        &payload(6, &[M::data(1, t3, V::Int(1700))]),
    )?;
    // Not protobuf at all.
    agent.publish_file("spBv1.0/g1/NDATA/n1", b"21.5")?;
    // The last one skips seq 7 and 8: one gap.
    agent.publish_file(
        "spBv1.0/g1/NDATA/n1",
        &payload(9, &[M::data(1, t3, V::Double(23.0))]),
    )?;

    let node_labels =
        |name: &str| labels(&[("__name__", name), ("edge_node", "n1"), ("group", "g1")]);
    wait_for_series(
        &core,
        "Inputs_Temp",
        &[(
            node_labels("Inputs_Temp"),
            vec![(T0_MS, 20.5), (t1, 21.0), (t2, 22.0), (t3, 23.0)],
        )],
    )?;
    // Everything published before the last message has been stored by now.
    wait_for_series(
        &core,
        "Inputs_Count",
        &[(node_labels("Inputs_Count"), vec![(T0_MS, -5.0), (t1, -6.0)])],
    )?;
    wait_for_series(
        &core,
        "Motor_RPM",
        &[(
            labels(&[
                ("__name__", "Motor_RPM"),
                ("device", "d1"),
                ("edge_node", "n1"),
                ("group", "g1"),
            ]),
            vec![(T0_MS, 1500.0), (t1, 1600.0)],
        )],
    )?;
    wait_for_series(&core, "bdSeq", &[])?;

    assert!(agent.process.is_running());
    let m = |name: &str, reason: &str| counter(&agent, name, reason);
    assert_eq!(m("updraft_edge_values_skipped_total", "unknown_alias"), 2.0);
    assert_eq!(m("updraft_edge_values_skipped_total", "not_numeric"), 1.0);
    assert_eq!(
        m("updraft_edge_messages_rejected_total", "invalid_sparkplug"),
        1.0
    );
    assert_eq!(agent.metric("updraft_edge_sparkplug_seq_gaps_total"), 1.0);
    let log = agent.process.log_text();
    assert!(
        log.contains("unknown_alias"),
        "unknown aliases are logged:\n{log}"
    );
    Ok(())
}

#[test]
fn nested_json_and_line_protocol_map_by_rule_and_bad_input_costs_no_good_sample()
-> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let mut agent = Agent::start_with_config(work.path(), &certs, core.quic, RULES, &[])?;

    // Nested JSON: include/exclude, rename, a nested timestamp in seconds.
    agent.publish(
        "plant/l1/d7/telemetry",
        br#"{"meta": {"time": 1700000000.5}, "battery": 3.7, "other": 1,
             "sensors": {"temp": 40.5, "hum": 30, "debug": {"raw": 1}, "fw": "1.2"}}"#,
    )?;
    // Line protocol, several lines, one of them broken; timestamps in milliseconds.
    agent.publish(
        "telegraf/h1/metrics",
        b"cpu,core=0 usage=12.5,idle=80i 1700000001000\n\
          cpu,core=1 usage=7.25 1700000001000\n\
          this is not line protocol\n\
          mem value=42u,note=\"x\" 1700000001000\n",
    )?;

    // Good JSON samples around bad input of every decoder.
    let good = |i: i64| {
        format!(
            r#"{{"meta": {{"time": {}}}, "sensors": {{"temp": {i}}}}}"#,
            T0_MS / 1000 + 100 + i
        )
    };
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "plant/l1/d7/telemetry",
            b"{\"sensors\":".to_vec(),
            "invalid_json",
        ),
        (
            "plant/l1/d7/telemetry",
            br#"{"meta": {"time": "soon"}, "battery": 1}"#.to_vec(),
            "invalid_timestamp",
        ),
        (
            "plant/l1/d7/telemetry",
            br#"{"other": 1}"#.to_vec(),
            "no_numeric_fields",
        ),
        (
            "telegraf/h1/x",
            b"no fields here".to_vec(),
            "invalid_line_protocol",
        ),
        (
            "spBv1.0/g1/DDATA/n1/d1",
            vec![0xff; 16],
            "invalid_sparkplug",
        ),
        ("spBv1.0/g1/NDATA", b"1".to_vec(), "topic_mismatch"),
        ("site1/dev1/temp", b"warm".to_vec(), "not_a_number"),
    ];
    let mut i = 0i64;
    for (topic, payload, _) in &bad {
        agent.publish("plant/l1/d8/telemetry", good(i).as_bytes())?;
        i += 1;
        agent.publish_file(topic, payload)?;
    }
    agent.publish("plant/l1/d8/telemetry", good(i).as_bytes())?;
    let n = i + 1;

    let expected: Vec<(i64, f64)> = (0..n)
        .map(|i| (T0_MS + (100 + i) * 1000, i as f64))
        .collect();
    let series = |name: &str, device: &str| {
        labels(&[("__name__", name), ("device", device), ("line", "l1")])
    };
    wait_for_series(
        &core,
        r#"plant_temperature{device="d8"}"#,
        &[(series("plant_temperature", "d8"), expected)],
    )?;
    let t_json = T0_MS + 500;
    wait_for_series(
        &core,
        r#"{device="d7"}"#,
        &[
            (series("plant_battery", "d7"), vec![(t_json, 3.7)]),
            (series("plant_sensors_hum", "d7"), vec![(t_json, 30.0)]),
            (series("plant_temperature", "d7"), vec![(t_json, 40.5)]),
        ],
    )?;
    let t_lp = T0_MS + 1000;
    let lp = |name: &str, core_label: Option<&str>| {
        let mut l = labels(&[("__name__", name), ("host", "h1")]);
        if let Some(c) = core_label {
            l.insert("core".to_owned(), c.to_owned());
        }
        l
    };
    wait_for_series(
        &core,
        r#"{host="h1"}"#,
        &[
            (lp("cpu_idle", Some("0")), vec![(t_lp, 80.0)]),
            (lp("cpu_usage", Some("0")), vec![(t_lp, 12.5)]),
            (lp("cpu_usage", Some("1")), vec![(t_lp, 7.25)]),
            (lp("mem", None), vec![(t_lp, 42.0)]),
        ],
    )?;

    assert!(agent.process.is_running(), "agent survived the bad input");
    let metrics = agent.metrics();
    for (_, _, reason) in &bad {
        let expected = bad.iter().filter(|b| b.2 == *reason).count() as f64;
        let counted = metric_sum(
            &metrics,
            "updraft_edge_messages_rejected_total",
            Some(&format!("reason=\"{reason}\"")),
        );
        assert_eq!(counted, expected, "rejections for {reason}\n{metrics}");
    }
    // The broken line, and the string fields of the JSON and line-protocol messages.
    assert_eq!(
        counter(&agent, "updraft_edge_values_skipped_total", "invalid_line"),
        1.0
    );
    assert_eq!(
        counter(&agent, "updraft_edge_values_skipped_total", "not_numeric"),
        2.0
    );
    let log = agent.process.log_text();
    assert!(
        log.contains("invalid_sparkplug") && log.contains("invalid_line_protocol"),
        "rejections are logged:\n{log}"
    );
    Ok(())
}

//! Writers that hand a reference dataset to peer systems in their own bulk-load formats.
//!
//! - [`write_influx_lines`]: InfluxDB line protocol, one line per sample:
//!   `measurement,tag=value,... field=value timestamp_ns`. Tags are the series' labels except
//!   `__name__`, in label order (sorted, as InfluxDB prefers). Values are floats in their shortest
//!   round-trip decimal form, so `velocity=12.3` is exactly the generated double. Timestamps are
//!   nanoseconds (the protocol's default precision). `iot-trucks` maps to its measurements
//!   (`readings`, `diagnostics`) and fields, `sensor-mix` to measurement `sensors` with the metric
//!   as field, `metrics-mix` to measurement `prometheus` with the metric as field (Telegraf's
//!   `metric_version = 2` shape).
//! - [`write_openmetrics`]: OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`:
//!   metric families are not interleaved (the format requires it), each opens with `# TYPE`; within
//!   a family series follow each other, each in timestamp order; timestamps are seconds with
//!   millisecond decimals; the file ends with `# EOF`. Grouping by family without holding the
//!   dataset in memory means generating it once per family (10 passes for `iot-trucks`, 8 for
//!   `sensor-mix`, 25 for `metrics-mix`); generation is cheap next to writing text.
//!
//! - [`write_remote_write`]: Prometheus remote_write 1.0 requests (snappy-compressed protobuf
//!   `WriteRequest`s, [`protocols::remote_write`]) of at most `batch_samples` samples each, in
//!   arrival order ([`super::stream`]), each series' samples of a request grouped under one
//!   `TimeSeries`. `iot-trucks`' late samples arrive out of order, as from a real sender.
//!   Each request goes to a sink: [`LengthDelimited`] writes them to a file as a 4-byte
//!   big-endian length then the body (the HTTP body a Prometheus server would POST), and
//!   `simulator export --url` POSTs them one by one.
//! - [`write_mqtt_lines`]: the MQTT messages a `simulator fleet` of the dataset's devices
//!   publishes (no anomalies, no offline periods), in publish order, one per line:
//!   `<topic> <payload>` (one space; topics hold no spaces and payloads no newlines). The
//!   payloads are byte for byte the fleet's for the same seed and start; see
//!   [`crate::fleet::plan`] for the topic and payload layout.

use super::{DatasetSpec, SeriesData, generate, generate_entity, stream};
use protocols::model::METRIC_NAME_LABEL;
use protocols::remote_write::{self as rw, WriteRequest};
use std::collections::HashMap;
use std::io::{self, Write};

/// Writes every sample of `series` as Influx line protocol; returns the number of lines.
pub fn write_influx_lines<W: Write>(
    series: impl IntoIterator<Item = SeriesData>,
    out: &mut W,
) -> io::Result<u64> {
    let mut lines = 0u64;
    let mut prefix = String::new();
    for s in series {
        prefix.clear();
        escape_influx(&mut prefix, s.info.influx_measurement, false);
        for l in s.info.labels.iter().filter(|l| l.name != METRIC_NAME_LABEL) {
            prefix.push(',');
            escape_influx(&mut prefix, &l.name, true);
            prefix.push('=');
            escape_influx(&mut prefix, &l.value, true);
        }
        prefix.push(' ');
        escape_influx(&mut prefix, s.info.influx_field, true);
        prefix.push('=');
        for sample in &s.samples {
            writeln!(
                out,
                "{prefix}{} {}",
                sample.value,
                i128::from(sample.timestamp_ms) * 1_000_000
            )?;
            lines += 1;
        }
    }
    Ok(lines)
}

/// Writes the whole dataset as OpenMetrics text; returns the number of sample lines.
pub fn write_openmetrics<W: Write>(spec: &DatasetSpec, out: &mut W) -> io::Result<u64> {
    let mut lines = 0u64;
    if spec.entities == 0 {
        out.write_all(b"# EOF\n")?;
        return Ok(0);
    }
    // Families in series order; every entity has the same series, so entity 0 tells them.
    let mut families: Vec<(&'static str, &'static str)> = Vec::new();
    for s in generate_entity(
        &DatasetSpec {
            duration_ms: 0,
            ..spec.clone()
        },
        0,
    ) {
        let f = (s.info.family, s.info.metric_type.as_str());
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let mut line = String::new();
    for (family, ty) in families {
        writeln!(out, "# TYPE {family} {ty}")?;
        for s in generate(spec).filter(|s| s.info.family == family) {
            let mut series = String::new();
            series.push_str(s.info.labels.metric_name());
            series.push('{');
            let mut first = true;
            for l in s.info.labels.iter().filter(|l| l.name != METRIC_NAME_LABEL) {
                if !first {
                    series.push(',');
                }
                first = false;
                series.push_str(&l.name);
                series.push_str("=\"");
                escape_label_value(&mut series, &l.value);
                series.push('"');
            }
            series.push('}');
            for sample in &s.samples {
                line.clear();
                line.push_str(&series);
                line.push(' ');
                push_openmetrics_float(&mut line, sample.value);
                line.push(' ');
                push_timestamp_seconds(&mut line, sample.timestamp_ms);
                line.push('\n');
                out.write_all(line.as_bytes())?;
                lines += 1;
            }
        }
    }
    out.write_all(b"# EOF\n")?;
    Ok(lines)
}

/// Builds the dataset's remote_write requests (at most `batch_samples` samples each, in arrival
/// order) and hands each encoded body to `sink`; returns (requests, samples).
pub fn write_remote_write(
    spec: &DatasetSpec,
    batch_samples: usize,
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<(u64, u64)> {
    let batch_samples = batch_samples.max(1);
    let (mut requests, mut samples) = (0u64, 0u64);
    let mut request = WriteRequest::default();
    let mut position: HashMap<u64, usize> = HashMap::new();
    let mut in_batch = 0usize;
    let mut flush = |request: &mut WriteRequest,
                     position: &mut HashMap<u64, usize>,
                     in_batch: &mut usize|
     -> io::Result<()> {
        if *in_batch == 0 {
            return Ok(());
        }
        let body = rw::encode_request(request).map_err(io::Error::other)?;
        sink(&body)?;
        request.timeseries.clear();
        position.clear();
        *in_batch = 0;
        Ok(())
    };
    for a in stream(spec) {
        let k = *position.entry(a.series_index).or_insert_with(|| {
            request.timeseries.push(rw::TimeSeries {
                labels: a
                    .info
                    .labels
                    .iter()
                    .map(|l| rw::Label {
                        name: l.name.to_string(),
                        value: l.value.to_string(),
                    })
                    .collect(),
                samples: Vec::new(),
            });
            request.timeseries.len() - 1
        });
        request.timeseries[k].samples.push(rw::Sample {
            value: a.sample.value,
            timestamp: a.sample.timestamp_ms,
        });
        in_batch += 1;
        samples += 1;
        if in_batch == batch_samples {
            flush(&mut request, &mut position, &mut in_batch)?;
            requests += 1;
        }
    }
    if in_batch > 0 {
        flush(&mut request, &mut position, &mut in_batch)?;
        requests += 1;
    }
    Ok((requests, samples))
}

/// A sink for [`write_remote_write`] that frames each body with its length (4 bytes,
/// big-endian).
pub struct LengthDelimited<W: Write>(pub W);

impl<W: Write> LengthDelimited<W> {
    pub fn write(&mut self, body: &[u8]) -> io::Result<()> {
        let len = u32::try_from(body.len())
            .map_err(|_| io::Error::other("remote_write request larger than 4 GiB"))?;
        self.0.write_all(&len.to_be_bytes())?;
        self.0.write_all(body)
    }
}

/// Reads back what [`LengthDelimited`] wrote: the request bodies, in order.
pub fn read_length_delimited(mut bytes: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| io::Error::other("truncated length prefix"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(io::Error::other("truncated remote_write request"));
        }
        out.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    Ok(out)
}

/// Writes the MQTT messages of the dataset's fleet as `<topic> <payload>` lines; returns the
/// number of lines.
pub fn write_mqtt_lines<W: Write>(spec: &DatasetSpec, out: &mut W) -> io::Result<u64> {
    use crate::fleet::plan::{Merged, PlanOptions};
    let mut plan = PlanOptions::new(spec.dataset, spec.entities, spec.seed, spec.start_ms);
    plan.duration_ms = Some(spec.duration_ms);
    let mut lines = 0u64;
    for p in Merged::new(&plan, 0..spec.entities) {
        out.write_all(p.topic.as_bytes())?;
        out.write_all(b" ")?;
        out.write_all(&p.payload)?;
        out.write_all(b"\n")?;
        lines += 1;
    }
    Ok(lines)
}

/// Line protocol escaping: commas and spaces everywhere, `=` too in tag keys, tag values and
/// field keys; backslashes before those.
fn escape_influx(out: &mut String, s: &str, escape_equals: bool) {
    for c in s.chars() {
        if c == ',' || c == ' ' || (escape_equals && c == '=') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// OpenMetrics label value escaping: backslash, double quote and newline.
fn escape_label_value(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_openmetrics_float(out: &mut String, v: f64) {
    use std::fmt::Write as _;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `1704067200123` → `1704067200.123`.
fn push_timestamp_seconds(out: &mut String, ts_ms: i64) {
    use std::fmt::Write as _;
    let secs = ts_ms.div_euclid(1000);
    let ms = ts_ms.rem_euclid(1000);
    let _ = write!(out, "{secs}.{ms:03}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{DAY_MS, Dataset, DatasetSpec};

    #[test]
    fn influx_lines_carry_measurement_tags_field_and_ns() {
        let spec = DatasetSpec::new(Dataset::IotTrucks, 1, 60_000);
        let mut out = Vec::new();
        let n = write_influx_lines(generate(&spec), &mut out).expect("write to memory");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(n as usize, text.lines().count());
        let first = text.lines().next().expect("a line");
        assert!(first.starts_with("readings,device_version=v1."), "{first}");
        assert!(first.contains(",name=truck_0,"), "{first}");
        assert!(first.contains(" latitude="), "{first}");
        let ts: i128 = first
            .rsplit(' ')
            .next()
            .and_then(|t| t.parse().ok())
            .expect("ts");
        assert_eq!(ts / 1_000_000_000, i128::from(spec.start_ms / 1000));
        assert!(
            text.lines()
                .any(|l| l.starts_with("diagnostics,") && l.contains(" status="))
        );
    }

    #[test]
    fn influx_escapes_special_characters() {
        let mut s = String::new();
        escape_influx(&mut s, "a b,c=d", true);
        assert_eq!(s, r"a\ b\,c\=d");
        let mut s = String::new();
        escape_influx(&mut s, "a b,c=d", false);
        assert_eq!(s, r"a\ b\,c=d");
    }

    #[test]
    fn openmetrics_groups_families_and_ends_with_eof() {
        let spec = DatasetSpec::new(Dataset::MetricsMix, 2, 60_000);
        let mut out = Vec::new();
        let n = write_openmetrics(&spec, &mut out).expect("write to memory");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE node_cpu_seconds counter\n"));
        assert!(text.contains("# TYPE http_request_duration_seconds histogram\n"));
        assert!(text.contains(r#"http_request_duration_seconds_bucket{handler="/api/v1/query",instance="host-1:9100",job="node",le="+Inf"} "#));
        // 73 series × 2 hosts × 4 scrapes in one minute.
        assert_eq!(n, 73 * 2 * 4);
        // Families are never interleaved: once a family's TYPE line has passed, its samples
        // appear only until the next TYPE line.
        let mut seen = std::collections::HashSet::new();
        let mut current = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap_or_default();
                assert!(seen.insert(current.to_owned()), "family {current} twice");
            } else if l != "# EOF" {
                assert!(l.starts_with(current), "{l} outside family {current}");
            }
        }
        let sample = text
            .lines()
            .find(|l| l.starts_with("node_load1{"))
            .expect("a node_load1 sample");
        let ts = sample.rsplit(' ').next().expect("ts");
        assert_eq!(ts.split('.').nth(1).map(str::len), Some(3), "{sample}");
    }

    #[test]
    fn openmetrics_counts_every_sample_of_a_day() {
        let spec = DatasetSpec::new(Dataset::SensorMix, 3, DAY_MS);
        let expected: usize = generate(&spec).map(|s| s.samples.len()).sum();
        let n = write_openmetrics(&spec, &mut io::sink()).expect("sink");
        assert_eq!(n as usize, expected);
    }

    #[test]
    fn remote_write_requests_hold_every_sample_once_in_bounded_batches() {
        let spec = DatasetSpec::new(Dataset::IotTrucks, 3, 600_000);
        let mut framed = LengthDelimited(Vec::new());
        let (requests, samples) =
            write_remote_write(&spec, 100, |b| framed.write(b)).expect("write to memory");
        let bodies = read_length_delimited(&framed.0).expect("framing");
        assert_eq!(bodies.len() as u64, requests);
        let mut got: Vec<(String, i64, u64)> = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let req = rw::decode_request(body, rw::DEFAULT_MAX_DECODED_BYTES).expect("decodes");
            let n: usize = req.timeseries.iter().map(|t| t.samples.len()).sum();
            assert!(
                n <= 100 && (n == 100 || i + 1 == bodies.len()),
                "{n} samples"
            );
            for ts in req.timeseries {
                let name = ts
                    .labels
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect::<Vec<_>>()
                    .join(",");
                assert!(
                    name.contains("__name__=readings_") || name.contains("__name__=diagnostics_")
                );
                for s in ts.samples {
                    got.push((name.clone(), s.timestamp, s.value.to_bits()));
                }
            }
        }
        let mut want: Vec<(String, i64, u64)> = generate(&spec)
            .flat_map(|s| {
                let name = s
                    .info
                    .labels
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect::<Vec<_>>()
                    .join(",");
                s.samples
                    .into_iter()
                    .map(move |x| (name.clone(), x.timestamp_ms, x.value.to_bits()))
            })
            .collect();
        assert_eq!(got.len() as u64, samples);
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn mqtt_lines_are_the_fleets_messages() {
        let spec = DatasetSpec::new(Dataset::SensorMix, 3, 60_000);
        let mut out = Vec::new();
        let n = write_mqtt_lines(&spec, &mut out).expect("write to memory");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().count() as u64, n);
        // Devices 0 (1 s), 1 and 2 (5 s) over one minute.
        assert_eq!(n, 60 + 12 + 12);
        let (topic, payload) = text
            .lines()
            .next()
            .and_then(|l| l.split_once(' '))
            .expect("topic and payload");
        assert!(topic.starts_with("site_0/sensor_"), "{topic}");
        let json: serde_json::Value = serde_json::from_str(payload).expect("json payload");
        assert!(json.get("ts").and_then(|t| t.as_i64()).is_some());
        let mut again = Vec::new();
        write_mqtt_lines(&spec, &mut again).expect("write to memory");
        assert_eq!(text.as_bytes(), again.as_slice());
    }

    #[test]
    fn timestamps_and_floats_format() {
        let mut s = String::new();
        push_timestamp_seconds(&mut s, 1_704_067_200_007);
        assert_eq!(s, "1704067200.007");
        let mut s = String::new();
        push_openmetrics_float(&mut s, f64::INFINITY);
        push_openmetrics_float(&mut s, 0.1);
        assert_eq!(s, "+Inf0.1");
    }
}

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
//! Not here yet: Prometheus remote-write and MQTT publishing of a dataset (they belong with the
//! ingest benchmarks that need them).

use super::{DatasetSpec, SeriesData, generate, generate_entity};
use protocols::model::METRIC_NAME_LABEL;
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

//! JSON bodies, byte for byte as Prometheus writes them.
//!
//! Written by hand rather than through serde because Prometheus' number formats have no
//! serde equivalent:
//! - Timestamps are seconds with the milliseconds as a three-digit fraction, omitted when
//!   zero: `1435781451.781`, `1435781451.780`, `1435781451`.
//! - Sample values are strings in Go's shortest round-trip form (`strconv.FormatFloat(v, 'f',
//!   -1, 64)`), switching to exponent form below 1e-6 and from 1e21 (`1e-07`, `1e+21`), with
//!   `NaN`, `+Inf` and `-Inf`.
//! - Strings are escaped as Go's `encoding/json` does, HTML characters included (`<` is
//!   `\u003c`).

use protocols::Label;
use query::{LabelSet, Value};
use std::fmt::Write;

/// `{"status":"success","data":<data>}`, plus `"warnings"` when there are any.
pub(crate) fn success(data: &str, warnings: &[String]) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    out.push_str(SUCCESS_PREFIX);
    out.push_str(data);
    if !warnings.is_empty() {
        out.push_str(r#","warnings":"#);
        string_array(&mut out, warnings.iter().map(String::as_str));
    }
    out.push('}');
    out
}

/// `{"status":"error","errorType":<kind>,"error":<message>}`.
pub(crate) fn error(kind: &str, message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 48);
    out.push_str(r#"{"status":"error","errorType":"#);
    string(&mut out, kind);
    out.push_str(r#","error":"#);
    string(&mut out, message);
    out.push('}');
    out
}

const SUCCESS_PREFIX: &str = r#"{"status":"success","data":"#;

/// [`success`] around [`query_data`], written in one buffer.
pub(crate) fn query_success(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(SUCCESS_PREFIX);
    query_data_into(&mut out, value);
    out.push('}');
    out
}

/// The `data` of a [`query_success`] body.
pub(crate) fn unwrap_success(body: &str) -> &str {
    body.strip_prefix(SUCCESS_PREFIX)
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(body)
}

/// `{"resultType":"vector","result":[...]}`: the `data` of a query response.
#[cfg(test)]
pub(crate) fn query_data(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    query_data_into(&mut out, value);
    out
}

fn query_data_into(out: &mut String, value: &Value) {
    out.push_str(r#"{"resultType":"#);
    string(out, value.type_name());
    out.push_str(r#","result":"#);
    match value {
        Value::Scalar(s) => point(out, s.timestamp_ms, s.value),
        Value::String(s) => {
            out.push('[');
            timestamp(out, s.timestamp_ms);
            out.push(',');
            string(out, &s.value);
            out.push(']');
        }
        Value::Vector(samples) => {
            out.push('[');
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"metric":"#);
                label_set(out, &s.metric);
                out.push_str(r#","value":"#);
                point(out, s.timestamp_ms, s.value);
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push('[');
            let points: usize = series.iter().map(|s| s.points.len()).sum();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            if points < PARALLEL_POINTS || threads < 2 || series.len() < 2 {
                matrix_series(out, series);
            } else {
                // Numbers are most of a large answer's cost: contiguous slices of series are
                // written on their own threads and joined in order.
                let per = series.len().div_ceil(threads);
                let parts: Vec<String> = std::thread::scope(|scope| {
                    let handles: Vec<_> = series
                        .chunks(per)
                        .map(|slice| {
                            scope.spawn(move || {
                                let mut part = String::new();
                                matrix_series(&mut part, slice);
                                part
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                });
                out.reserve(parts.iter().map(String::len).sum::<usize>() + parts.len());
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(part);
                }
            }
            out.push(']');
        }
    }
    out.push('}');
}

/// Points in a matrix answer from which it is written on several threads.
const PARALLEL_POINTS: usize = 50_000;

/// The series of a matrix, comma-separated, without the enclosing brackets.
fn matrix_series(out: &mut String, series: &[query::Series]) {
    // About 28 bytes a point.
    out.reserve(series.iter().map(|s| s.points.len() * 28 + 64).sum());
    let mut times = TimestampCache::new();
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"metric":"#);
        label_set(out, &s.metric);
        out.push_str(r#","values":["#);
        for (j, p) in s.points.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push('[');
            times.write(out, p.timestamp_ms);
            out.push_str(",\"");
            float(out, p.value);
            out.push_str("\"]");
        }
        out.push_str("]}");
    }
}

/// Formatted timestamps by time, direct-mapped: the series of a range answer share their
/// step times, so each is formatted about once.
struct TimestampCache {
    slots: Vec<(i64, String)>,
}

impl TimestampCache {
    const BITS: u32 = 11;

    fn new() -> Self {
        Self {
            slots: vec![(i64::MIN, String::new()); 1 << Self::BITS],
        }
    }

    fn write(&mut self, out: &mut String, ms: i64) {
        let index = (ms as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - Self::BITS);
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return timestamp(out, ms);
        };
        if slot.0 != ms || slot.1.is_empty() {
            slot.0 = ms;
            slot.1.clear();
            timestamp(&mut slot.1, ms);
        }
        out.push_str(&slot.1);
    }
}

/// `["a","b"]`.
pub(crate) fn string_array<'a>(out: &mut String, items: impl IntoIterator<Item = &'a str>) {
    out.push('[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, item);
    }
    out.push(']');
}

/// `{"__name__":"up","job":"node"}`, in the given (sorted) order.
pub(crate) fn labels<'a>(out: &mut String, labels: impl IntoIterator<Item = &'a Label>) {
    out.push('{');
    for (i, l) in labels.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, &l.name);
        out.push(':');
        string(out, &l.value);
    }
    out.push('}');
}

fn label_set(out: &mut String, set: &LabelSet) {
    labels(out, set.iter());
}

/// `[<timestamp>,"<value>"]`.
fn point(out: &mut String, timestamp_ms: i64, value: f64) {
    out.push('[');
    timestamp(out, timestamp_ms);
    out.push_str(",\"");
    float(out, value);
    out.push_str("\"]");
}

/// Seconds with a three-digit millisecond fraction, omitted when zero.
pub(crate) fn timestamp(out: &mut String, ms: i64) {
    if ms < 0 {
        out.push('-');
    }
    // unsigned_abs: i64::MIN has no positive i64 counterpart.
    let ms = ms.unsigned_abs();
    out.push_str(itoa::Buffer::new().format(ms / 1000));
    let fraction = ms % 1000;
    if fraction != 0 {
        out.push('.');
        let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
        out.extend(digits.map(|d| char::from(b'0' + d as u8)));
    }
}

/// Go's `strconv.FormatFloat(v, 'f' or 'e', -1, 64)` as Prometheus picks between them.
pub(crate) fn float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v != 0.0 && (v.abs() < 1e-6 || v.abs() >= 1e21) {
        // Rust's `{:e}` has the same shortest digits but writes the exponent bare (`1e-7`);
        // Go writes its sign and at least two digits (`1e-07`).
        let formatted = format!("{v:e}");
        let (mantissa, exponent) = formatted.split_once('e').unwrap_or((&formatted, "0"));
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(digits) => ('-', digits),
            None => ('+', exponent),
        };
        let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
    } else {
        // Ryu writes the shortest round-trip digits, as Rust's `Display` and Go's 'f' do,
        // several times faster (query answers are mostly numbers): without exponent from
        // 1e-5 to 1e16, and with `.0` on whole numbers, which Go leaves out. Where two
        // shortest strings are equally close it may pick the other one; both parse back to
        // the same value.
        let mut buffer = ryu::Buffer::new();
        let text = buffer.format_finite(v);
        if text.contains('e') {
            let _ = write!(out, "{v}");
        } else {
            out.push_str(text.strip_suffix(".0").unwrap_or(text));
        }
    }
}

/// A JSON string, escaped as Go's `encoding/json` (HTML-safe) does.
pub(crate) fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::{Labels, Sample};
    use query::{InstantSample, Scalar, Series, StringValue};

    fn ts(ms: i64) -> String {
        let mut s = String::new();
        timestamp(&mut s, ms);
        s
    }

    fn fl(v: f64) -> String {
        let mut s = String::new();
        float(&mut s, v);
        s
    }

    /// The fast path must write exactly what Rust's `Display` writes (Go's 'f' digits) over
    /// the decimal range, for values of every magnitude and precision.
    #[test]
    fn values_match_display_across_random_bit_patterns() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let (mut checked, mut ties) = (0, 0);
        for i in 0..200_000u64 {
            // xorshift64*: bit patterns of every exponent, plus short decimals.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = if i % 2 == 0 {
                f64::from_bits(x)
            } else {
                (x % 10_000_000) as f64 / [1.0, 10.0, 1e3, 1e7][(i % 8 / 2) as usize]
            };
            if !v.is_finite() || (v != 0.0 && (v.abs() < 1e-6 || v.abs() >= 1e21)) {
                continue;
            }
            // Where two shortest digit strings are equally close (a tie at the last digit),
            // Ryu and Rust may pick different ones; both read back as the same value.
            let (fast, display) = (fl(v), format!("{v}"));
            if fast != display {
                assert_eq!(fast.len(), display.len(), "bits {:#x}", v.to_bits());
                assert_eq!(fast.parse::<f64>().ok(), Some(v), "bits {:#x}", v.to_bits());
                ties += 1;
            }
            checked += 1;
        }
        assert!(checked > 100_000, "{checked}");
        assert!(ties < checked / 1000, "{ties} of {checked} differ");
    }

    #[test]
    fn timestamps_like_prometheus() {
        assert_eq!(ts(1_435_781_451_781), "1435781451.781");
        assert_eq!(ts(1_435_781_451_780), "1435781451.780");
        assert_eq!(ts(1_435_781_451_000), "1435781451");
        assert_eq!(ts(1_435_781_451_005), "1435781451.005");
        assert_eq!(ts(0), "0");
        assert_eq!(ts(1), "0.001");
        assert_eq!(ts(-1_500), "-1.500");
        assert_eq!(ts(i64::MIN), "-9223372036854775.808");
    }

    #[test]
    fn values_like_go_format_float() {
        let cases = [
            (21.5, "21.5"),
            (1.0, "1"),
            (-0.0, "-0"),
            (0.0, "0"),
            (100.0, "100"),
            (0.1, "0.1"),
            (1e-6, "0.000001"),
            (1e-7, "1e-07"),
            (1.5e-7, "1.5e-07"),
            (-2.5e-10, "-2.5e-10"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.234e300, "1.234e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (123456789.123, "123456789.123"),
            (1e15, "1000000000000000"),
            (1e16, "10000000000000000"),
            (123456789012345680.0, "123456789012345680"),
            (0.00001, "0.00001"),
            (0.0000123, "0.0000123"),
            (-1.5, "-1.5"),
            (1.0 / 3.0, "0.3333333333333333"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (v, want) in cases {
            assert_eq!(fl(v), want, "{v:e}");
        }
    }

    #[test]
    fn strings_escaped_like_go() {
        let mut s = String::new();
        string(&mut s, "a\"b\\c\nd<e>&\u{1}é\u{2028}");
        assert_eq!(s, r#""a\"b\\c\nd\u003ce\u003e\u0026\u0001é\u2028""#);
    }

    #[test]
    fn result_shapes() {
        let metric: LabelSet = Labels::from_metric("temp", [("site", "s1")])
            .expect("valid")
            .into();
        let t = 1_700_000_000_123;
        let vector = Value::Vector(vec![InstantSample {
            metric: metric.clone(),
            timestamp_ms: t,
            value: 21.5,
        }]);
        assert_eq!(
            query_data(&vector),
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"temp","site":"s1"},"value":[1700000000.123,"21.5"]}]}"#
        );
        let matrix = Value::Matrix(vec![
            Series {
                metric: LabelSet::empty(),
                points: vec![Sample::new(1_000, 1.0), Sample::new(2_500, f64::NAN)],
            },
            Series {
                metric,
                points: vec![],
            },
        ]);
        assert_eq!(
            query_data(&matrix),
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2.500,"NaN"]]},{"metric":{"__name__":"temp","site":"s1"},"values":[]}]}"#
        );
        let scalar = Value::Scalar(Scalar {
            timestamp_ms: 1_000,
            value: -1.0,
        });
        assert_eq!(
            query_data(&scalar),
            r#"{"resultType":"scalar","result":[1,"-1"]}"#
        );
        let string_value = Value::String(StringValue {
            timestamp_ms: 1_001,
            value: "hi".into(),
        });
        assert_eq!(
            query_data(&string_value),
            r#"{"resultType":"string","result":[1.001,"hi"]}"#
        );
        assert_eq!(
            query_data(&Value::Vector(vec![])),
            r#"{"resultType":"vector","result":[]}"#
        );
    }

    /// A matrix large enough to be written on several threads, with cached timestamps, reads
    /// exactly as one written point by point.
    #[test]
    fn large_matrices_are_written_in_series_order() {
        let series: Vec<Series> = (0..37)
            .map(|i| Series {
                metric: Labels::from_metric("m", [("i", i.to_string().as_str())])
                    .expect("valid")
                    .into(),
                points: (0..2_000)
                    .map(|k| Sample::new(k * 15_000 + i, (k * i) as f64 / 7.0))
                    .collect(),
            })
            .collect();
        // Written point by point, without the timestamp cache or threads.
        let mut expected = String::from(r#"{"resultType":"matrix","result":["#);
        for (i, s) in series.iter().enumerate() {
            if i > 0 {
                expected.push(',');
            }
            expected.push_str(r#"{"metric":"#);
            label_set(&mut expected, &s.metric);
            expected.push_str(r#","values":["#);
            for (j, p) in s.points.iter().enumerate() {
                if j > 0 {
                    expected.push(',');
                }
                point(&mut expected, p.timestamp_ms, p.value);
            }
            expected.push_str("]}");
        }
        expected.push_str("]}");
        assert!(series.len() * 2_000 >= PARALLEL_POINTS);
        assert_eq!(query_data(&Value::Matrix(series)), expected);
    }

    #[test]
    fn a_query_success_is_the_envelope_around_the_data() {
        let value = Value::Scalar(Scalar {
            timestamp_ms: 1_000,
            value: 2.5,
        });
        let body = query_success(&value);
        assert_eq!(body, success(&query_data(&value), &[]));
        assert_eq!(unwrap_success(&body), query_data(&value));
    }

    #[test]
    fn envelopes() {
        assert_eq!(success("[]", &[]), r#"{"status":"success","data":[]}"#);
        assert_eq!(
            success(r#"["a"]"#, &["results truncated due to limit".into()]),
            r#"{"status":"success","data":["a"],"warnings":["results truncated due to limit"]}"#
        );
        assert_eq!(
            error("bad_data", "x \"y\""),
            r#"{"status":"error","errorType":"bad_data","error":"x \"y\""}"#
        );
    }
}

//! Turning one MQTT publish (topic + payload) into samples. Pure functions, no I/O.
//!
//! # Topic
//!
//! The topic template splits on `/` into levels. `{name}` captures that topic level as the
//! label `name`, `{metric}` captures the metric name (sanitised with
//! [`protocols::model::sanitize_metric_name`]), any other level is a literal that must match
//! exactly. The topic must have as many levels as the template. Captured label values are the
//! levels as-is; an empty level captured as a label gives an empty value, which
//! [`protocols::model::Labels`] drops as Prometheus does (`s1//temp` becomes
//! `temp{site="s1"}`). An empty metric level is a mismatch.
//!
//! # Payload
//!
//! - A plain number: trimmed UTF-8 text that parses as an `f64` (Rust syntax, so `NaN` and
//!   `inf` are accepted, as Prometheus does). Timestamp = receive time.
//! - A flat JSON object (first non-blank byte `{`): every numeric field becomes one sample of the
//!   series `<metric>_<field>` (sanitised); booleans become 1/0; strings, `null`, arrays and
//!   nested objects are ignored. `ts` or `timestamp` (if both, `ts`) holds the timestamp: a JSON
//!   number is milliseconds since the Unix epoch, a string must be RFC 3339. Without either, the
//!   receive time. An object with no numeric field is rejected.
//!
//! Every message is mapped entirely or rejected entirely, with a [`Rejection`] that names one
//! [`RejectReason`]; rejections never affect other messages.

use protocols::model::{Labels, ModelError, Sample, is_valid_label_name, sanitize_metric_name};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// JSON fields that carry the sample timestamp instead of a value, in order of precedence.
const TIMESTAMP_FIELDS: [&str; 2] = ["ts", "timestamp"];

/// A validated topic template such as `{site}/{device}/{metric}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    raw: String,
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Label(String),
    Metric,
}

/// Why a topic template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template must contain {{metric}} exactly once, found it {0} times")]
    MetricCount(usize),
    #[error("{{{0}}} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)")]
    InvalidLabel(String),
    #[error("label {{{0}}} is captured twice")]
    DuplicateLabel(String),
    #[error("level {0:?} mixes literal text and braces, or uses an MQTT wildcard")]
    InvalidLevel(String),
}

impl TopicTemplate {
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl Default for TopicTemplate {
    /// `{site}/{device}/{metric}`, built directly so that no fallible parse is needed.
    fn default() -> Self {
        Self {
            raw: "{site}/{device}/{metric}".to_owned(),
            levels: vec![
                Level::Label("site".to_owned()),
                Level::Label("device".to_owned()),
                Level::Metric,
            ],
        }
    }
}

impl FromStr for TopicTemplate {
    type Err = TemplateError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut levels = Vec::new();
        let mut labels: Vec<&str> = Vec::new();
        for level in raw.split('/') {
            let capture = level
                .strip_prefix('{')
                .and_then(|rest| rest.strip_suffix('}'));
            let parsed = match capture {
                Some("metric") => Level::Metric,
                Some(name) => {
                    if !is_valid_label_name(name) || name.starts_with("__") {
                        return Err(TemplateError::InvalidLabel(name.to_owned()));
                    }
                    if labels.contains(&name) {
                        return Err(TemplateError::DuplicateLabel(name.to_owned()));
                    }
                    labels.push(name);
                    Level::Label(name.to_owned())
                }
                None if level.contains(['{', '}', '+', '#']) => {
                    return Err(TemplateError::InvalidLevel(level.to_owned()));
                }
                None => Level::Literal(level.to_owned()),
            };
            levels.push(parsed);
        }
        let metrics = levels.iter().filter(|l| **l == Level::Metric).count();
        if metrics != 1 {
            return Err(TemplateError::MetricCount(metrics));
        }
        Ok(Self {
            raw: raw.to_owned(),
            levels,
        })
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The label value of `updraft_edge_messages_rejected_total{reason}` for each rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    NotANumber,
    InvalidJson,
    TopicMismatch,
    PayloadTooLarge,
    InvalidTimestamp,
    InvalidLabels,
    NoNumericFields,
}

impl RejectReason {
    pub const ALL: [Self; 7] = [
        Self::NotANumber,
        Self::InvalidJson,
        Self::TopicMismatch,
        Self::PayloadTooLarge,
        Self::InvalidTimestamp,
        Self::InvalidLabels,
        Self::NoNumericFields,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotANumber => "not_a_number",
            Self::InvalidJson => "invalid_json",
            Self::TopicMismatch => "topic_mismatch",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::InvalidLabels => "invalid_labels",
            Self::NoNumericFields => "no_numeric_fields",
        }
    }
}

/// Why one publish produced no samples.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("payload of {len} bytes exceeds the {max} byte limit")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("topic does not match the template: {0}")]
    TopicMismatch(&'static str),
    #[error("payload is neither a number nor a JSON object")]
    NotANumber,
    #[error("invalid JSON object: {0}")]
    InvalidJson(String),
    #[error("invalid timestamp: {0}")]
    InvalidTimestamp(String),
    #[error("invalid label set: {0}")]
    InvalidLabels(#[from] ModelError),
    #[error("JSON object has no numeric field")]
    NoNumericFields,
}

impl Rejection {
    pub fn reason(&self) -> RejectReason {
        match self {
            Self::PayloadTooLarge { .. } => RejectReason::PayloadTooLarge,
            Self::TopicMismatch(_) => RejectReason::TopicMismatch,
            Self::NotANumber => RejectReason::NotANumber,
            Self::InvalidJson(_) => RejectReason::InvalidJson,
            Self::InvalidTimestamp(_) => RejectReason::InvalidTimestamp,
            Self::InvalidLabels(_) => RejectReason::InvalidLabels,
            Self::NoNumericFields => RejectReason::NoNumericFields,
        }
    }
}

/// One decoded sample and the series it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedSample {
    pub labels: Labels,
    pub sample: Sample,
}

/// Maps publishes with a fixed template and payload limit.
#[derive(Debug, Clone)]
pub struct Mapper {
    template: TopicTemplate,
    max_payload_bytes: usize,
}

impl Mapper {
    pub fn new(template: TopicTemplate, max_payload_bytes: usize) -> Self {
        Self {
            template,
            max_payload_bytes,
        }
    }

    /// Maps one publish; `received_ms` is used when the payload carries no timestamp.
    pub fn map(
        &self,
        topic: &[u8],
        payload: &[u8],
        received_ms: i64,
    ) -> Result<Vec<MappedSample>, Rejection> {
        // Cheapest check first, so a flood of huge payloads costs no parsing.
        if payload.len() > self.max_payload_bytes {
            return Err(Rejection::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload_bytes,
            });
        }
        let (metric, labels) = self.match_topic(topic)?;
        match parse_payload(payload, received_ms)? {
            Payload::Number(value) => {
                let labels = Labels::from_metric(&metric, labels)?;
                Ok(vec![MappedSample {
                    labels,
                    sample: Sample::new(received_ms, value),
                }])
            }
            Payload::Fields {
                timestamp_ms,
                fields,
            } => fields
                .into_iter()
                .map(|(field, value)| {
                    // The joined name only contains characters that sanitising keeps or maps
                    // to `_`, and it is never empty; the fallback is unreachable.
                    let name = sanitize_metric_name(&format!("{metric}_{field}"))
                        .unwrap_or_else(|| metric.clone());
                    Ok(MappedSample {
                        labels: Labels::from_metric(&name, labels.iter().cloned())?,
                        sample: Sample::new(timestamp_ms, value),
                    })
                })
                .collect(),
        }
    }

    /// Returns the sanitised metric name and the captured `(label, value)` pairs.
    fn match_topic(&self, topic: &[u8]) -> Result<(String, Vec<(String, String)>), Rejection> {
        let topic =
            std::str::from_utf8(topic).map_err(|_| Rejection::TopicMismatch("not UTF-8"))?;
        let levels: Vec<&str> = topic.split('/').collect();
        if levels.len() != self.template.levels.len() {
            return Err(Rejection::TopicMismatch("wrong number of levels"));
        }
        let mut metric = None;
        let mut labels = Vec::with_capacity(levels.len());
        for (want, got) in self.template.levels.iter().zip(levels) {
            match want {
                Level::Literal(lit) if lit == got => {}
                Level::Literal(_) => return Err(Rejection::TopicMismatch("literal level differs")),
                Level::Metric if got.is_empty() => {
                    return Err(Rejection::TopicMismatch("empty metric level"));
                }
                Level::Metric => metric = sanitize_metric_name(got),
                Level::Label(name) => labels.push((name.clone(), got.to_owned())),
            }
        }
        // The template holds exactly one `{metric}` and its level is non-empty.
        let metric = metric.ok_or(Rejection::TopicMismatch("no metric level"))?;
        Ok((metric, labels))
    }
}

enum Payload {
    Number(f64),
    Fields {
        timestamp_ms: i64,
        fields: Vec<(String, f64)>,
    },
}

fn parse_payload(payload: &[u8], received_ms: i64) -> Result<Payload, Rejection> {
    let text = std::str::from_utf8(payload).map_err(|_| Rejection::NotANumber)?;
    let text = text.trim();
    if text.starts_with('{') || text.starts_with('[') {
        return parse_object(text, received_ms);
    }
    text.parse::<f64>()
        .map(Payload::Number)
        .map_err(|_| Rejection::NotANumber)
}

fn parse_object(text: &str, received_ms: i64) -> Result<Payload, Rejection> {
    use serde_json::Value;

    let object: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| Rejection::InvalidJson(e.to_string()))?;
    let timestamp_ms = match TIMESTAMP_FIELDS.iter().find_map(|k| object.get(*k)) {
        Some(value) => parse_timestamp(value)?,
        None => received_ms,
    };
    let fields: Vec<(String, f64)> = object
        .into_iter()
        .filter(|(name, _)| !TIMESTAMP_FIELDS.contains(&name.as_str()))
        .filter_map(|(name, value)| match value {
            Value::Number(n) => n.as_f64().map(|v| (name, v)),
            Value::Bool(b) => Some((name, if b { 1.0 } else { 0.0 })),
            Value::Null | Value::String(_) | Value::Array(_) | Value::Object(_) => None,
        })
        .collect();
    if fields.is_empty() {
        return Err(Rejection::NoNumericFields);
    }
    Ok(Payload::Fields {
        timestamp_ms,
        fields,
    })
}

fn parse_timestamp(value: &serde_json::Value) -> Result<i64, Rejection> {
    use serde_json::Value;

    match value {
        Value::Number(n) => {
            if let Some(ms) = n.as_i64() {
                return Ok(ms);
            }
            // Fractional or out-of-range milliseconds: keep whole milliseconds when the value
            // fits, refuse it otherwise.
            match n.as_f64() {
                Some(f) if f.is_finite() && f.abs() < i64::MAX as f64 => Ok(f.trunc() as i64),
                _ => Err(Rejection::InvalidTimestamp(format!(
                    "{n} is not a millisecond timestamp"
                ))),
            }
        }
        Value::String(s) => {
            let at = OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|e| Rejection::InvalidTimestamp(format!("{s:?}: {e}")))?;
            i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000_000))
                .map_err(|_| Rejection::InvalidTimestamp(format!("{s:?} is out of range")))
        }
        other => Err(Rejection::InvalidTimestamp(format!(
            "expected milliseconds or an RFC 3339 string, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn mapper() -> Mapper {
        Mapper::new("{site}/{device}/{metric}".parse().expect("valid"), 1024)
    }

    fn reason(topic: &str, payload: &str) -> RejectReason {
        match mapper().map(topic.as_bytes(), payload.as_bytes(), NOW) {
            Ok(samples) => panic!("expected a rejection, got {samples:?}"),
            Err(e) => e.reason(),
        }
    }

    fn series(samples: &[MappedSample]) -> Vec<(String, i64, f64)> {
        let mut out: Vec<_> = samples
            .iter()
            .map(|s| (s.labels.to_string(), s.sample.timestamp_ms, s.sample.value))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn plain_number_uses_receive_time_and_topic_labels() {
        let got = mapper()
            .map(b"plant-1/pump.7/temp-c", b"  21.5\n", NOW)
            .expect("maps");
        assert_eq!(
            series(&got),
            [(
                r#"temp_c{device="pump.7",site="plant-1"}"#.to_owned(),
                NOW,
                21.5
            )]
        );
    }

    #[test]
    fn json_object_fans_out_numeric_fields() {
        let got = mapper()
            .map(
                b"s1/d1/env",
                br#"{"temp": 21.5, "humid ity": 40, "ok": true, "off": false,
                    "label": "x", "nested": {"a": 1}, "list": [1], "none": null,
                    "ts": 1700000000123}"#,
                NOW,
            )
            .expect("maps");
        let t = 1_700_000_000_123;
        assert_eq!(
            series(&got),
            [
                (
                    r#"env_humid_ity{device="d1",site="s1"}"#.to_owned(),
                    t,
                    40.0
                ),
                (r#"env_off{device="d1",site="s1"}"#.to_owned(), t, 0.0),
                (r#"env_ok{device="d1",site="s1"}"#.to_owned(), t, 1.0),
                (r#"env_temp{device="d1",site="s1"}"#.to_owned(), t, 21.5),
            ]
        );
    }

    #[test]
    fn json_timestamps() {
        let ts = |payload: &str| {
            mapper()
                .map(b"s/d/m", payload.as_bytes(), NOW)
                .expect("maps")[0]
                .sample
                .timestamp_ms
        };
        assert_eq!(ts(r#"{"v": 1}"#), NOW);
        assert_eq!(ts(r#"{"v": 1, "timestamp": 42}"#), 42);
        assert_eq!(ts(r#"{"v": 1, "ts": 7, "timestamp": 42}"#), 7);
        assert_eq!(ts(r#"{"v": 1, "ts": 1.9}"#), 1);
        assert_eq!(
            ts(r#"{"v": 1, "ts": "2023-11-14T22:13:20.5+01:00"}"#),
            1_699_996_400_500
        );
        assert_eq!(ts(r#"{"v": 1, "ts": "1969-12-31T23:59:59.999Z"}"#), -1);
    }

    #[test]
    fn every_rejection_reason() {
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
        assert_eq!(reason("s/d/m", r#"{"v": 1, "ts": true}"#), InvalidTimestamp);
        assert_eq!(
            reason("s/d/m", r#"{"v": 1, "ts": 1e300}"#),
            InvalidTimestamp
        );
        assert_eq!(
            reason("s/d/m", r#"{"ts": 5, "name": "x"}"#),
            NoNumericFields
        );
        assert_eq!(reason("s/d/m", "{}"), NoNumericFields);
        let long = "x".repeat(protocols::model::MAX_VALUE_BYTES + 1);
        assert_eq!(reason(&format!("s/{long}/m"), "1"), InvalidLabels);
        let mapper = mapper();
        let err = mapper.map(&[0xff, b'/', b'd', b'/', b'm'], b"1", NOW);
        assert_eq!(err.map_err(|e| e.reason()).err(), Some(TopicMismatch));
        let err = mapper.map(b"s/d/m", &[0xff, 0xfe], NOW);
        assert_eq!(err.map_err(|e| e.reason()).err(), Some(NotANumber));
    }

    #[test]
    fn reason_discriminants_index_all() {
        // The ingest thread indexes its counters by `reason as usize`.
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn literal_levels_must_match() {
        let m = Mapper::new("sensors/{device}/{metric}".parse().expect("valid"), 64);
        assert!(m.map(b"sensors/d1/t", b"1", NOW).is_ok());
        let err = m
            .map(b"actuators/d1/t", b"1", NOW)
            .err()
            .map(|e| e.reason());
        assert_eq!(err, Some(RejectReason::TopicMismatch));
    }

    #[test]
    fn an_empty_label_level_drops_the_label() {
        let got = mapper().map(b"s1//temp", b"1", NOW).expect("maps");
        assert_eq!(got[0].labels.to_string(), r#"temp{site="s1"}"#);
    }

    #[test]
    fn metric_level_is_sanitised() {
        let m = Mapper::new("{metric}".parse().expect("valid"), 64);
        let got = m.map(b"9lives", b"1", NOW).expect("maps");
        assert_eq!(got[0].labels.metric_name(), "_9lives");
    }

    #[test]
    fn template_validation() {
        let err = |t: &str| t.parse::<TopicTemplate>().err();
        assert_eq!(err("{site}/{device}"), Some(TemplateError::MetricCount(0)));
        assert_eq!(
            err("{metric}/{metric}"),
            Some(TemplateError::MetricCount(2))
        );
        assert!(matches!(
            err("{a-b}/{metric}"),
            Some(TemplateError::InvalidLabel(_))
        ));
        assert!(matches!(
            err("{__x}/{metric}"),
            Some(TemplateError::InvalidLabel(_))
        ));
        assert!(matches!(
            err("{a}/{a}/{metric}"),
            Some(TemplateError::DuplicateLabel(_))
        ));
        assert!(matches!(
            err("+/{metric}"),
            Some(TemplateError::InvalidLevel(_))
        ));
        assert!(matches!(
            err("x{a}/{metric}"),
            Some(TemplateError::InvalidLevel(_))
        ));
        let ok: TopicTemplate = "/plant/{line}/{metric}".parse().expect("valid");
        assert_eq!(ok.to_string(), "/plant/{line}/{metric}");
        let default: TopicTemplate = "{site}/{device}/{metric}".parse().expect("valid");
        assert_eq!(default, TopicTemplate::default());
    }
}

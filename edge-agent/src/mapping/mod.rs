//! Turning one MQTT publish (topic + payload) into samples. No I/O; the only state is what
//! the Sparkplug B decoder learns from BIRTH messages.
//!
//! # Rules
//!
//! The agent has an ordered list of [`Rule`]s; the first whose topic pattern
//! ([`TopicTemplate`], module `topic`) matches the topic handles the message, and a topic no
//! rule matches is refused (`topic_mismatch`). A rule names a payload decoder:
//!
//! | decoder | payload | values | module |
//! |---|---|---|---|
//! | `auto` | a number, or a JSON object if it starts with `{` or `[` | as `number` or `json` | here, `json` |
//! | `number` | trimmed UTF-8 text that parses as an `f64` (`NaN`, `inf` too) | one | here |
//! | `json` | one JSON object, nested objects flattened | one per numeric leaf | `json` |
//! | `influx` | InfluxDB line protocol, one or more lines | one per numeric field | `influx` |
//! | `sparkplug` | Sparkplug B protobuf under `spBv1.0/` | one per numeric metric | `sparkplug` |
//!
//! # Series
//!
//! A value's metric name joins, with `_`, the rule's metric (the `{metric}` topic level or the
//! rule's `metric` option, if any) and the value's own name from the payload (a JSON path, a
//! line-protocol measurement and field, a Sparkplug B metric name; none for a plain number),
//! then replaces what Prometheus does not allow by `_` ([`sanitize_metric_name`]). Labels
//! come from the payload (line-protocol tags, Sparkplug B ids), then the topic's captures, then
//! the rule's `labels`; a later source wins on a name clash. [`Labels`] validates the result
//! and drops empty values, as Prometheus does.
//!
//! # Errors
//!
//! A message is refused as a whole with a [`Rejection`] naming one [`RejectReason`] when it
//! cannot be read at all or yields no value. Single values that cannot be used inside an
//! otherwise good message (a string field, an unknown Sparkplug B alias, a bad line among
//! good ones) are skipped and tallied by [`SkipReason`] without costing the others. Neither
//! ever affects another message.

mod influx;
mod json;
mod rules;
mod sparkplug;
mod topic;

pub use rules::{Decoder, Overflow, Rule, RuleConfig, RuleError};
pub use topic::{TemplateError, TopicTemplate};

use protocols::model::{Labels, ModelError, Sample, sanitize_metric_name};

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
    InvalidLineProtocol,
    InvalidSparkplug,
}

impl RejectReason {
    pub const ALL: [Self; 9] = [
        Self::NotANumber,
        Self::InvalidJson,
        Self::TopicMismatch,
        Self::PayloadTooLarge,
        Self::InvalidTimestamp,
        Self::InvalidLabels,
        Self::NoNumericFields,
        Self::InvalidLineProtocol,
        Self::InvalidSparkplug,
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
            Self::InvalidLineProtocol => "invalid_line_protocol",
            Self::InvalidSparkplug => "invalid_sparkplug",
        }
    }
}

/// Why one publish produced no samples.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("payload of {len} bytes exceeds the {max} byte limit")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("topic does not match: {0}")]
    TopicMismatch(&'static str),
    #[error("payload is neither a number nor a JSON object")]
    NotANumber,
    #[error("invalid JSON object: {0}")]
    InvalidJson(String),
    #[error("invalid timestamp: {0}")]
    InvalidTimestamp(String),
    #[error("invalid label set: {0}")]
    InvalidLabels(#[from] ModelError),
    #[error("no numeric value in the payload")]
    NoNumericFields,
    #[error("no valid line protocol line: {0}")]
    InvalidLineProtocol(String),
    #[error("not a Sparkplug B payload: {0}")]
    InvalidSparkplug(String),
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
            Self::InvalidLineProtocol(_) => RejectReason::InvalidLineProtocol,
            Self::InvalidSparkplug(_) => RejectReason::InvalidSparkplug,
        }
    }
}

/// Why a single value inside an accepted message was left out. The label value of
/// `updraft_edge_values_skipped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// A string, null, array, bytes, dataset, template, ...: nothing to store as a number.
    NotNumeric,
    /// A Sparkplug B metric sent by an alias no BIRTH has taught (or with neither name nor
    /// alias).
    UnknownAlias,
    /// A Sparkplug B BIRTH alias not learned because the alias state is full.
    AliasLimit,
    /// A line-protocol line that does not parse.
    InvalidLine,
    /// A value whose name is empty (such as the JSON key `""` without a rule metric).
    InvalidName,
}

impl SkipReason {
    pub const ALL: [Self; 5] = [
        Self::NotNumeric,
        Self::UnknownAlias,
        Self::AliasLimit,
        Self::InvalidLine,
        Self::InvalidName,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotNumeric => "not_numeric",
            Self::UnknownAlias => "unknown_alias",
            Self::AliasLimit => "alias_limit",
            Self::InvalidLine => "invalid_line",
            Self::InvalidName => "invalid_name",
        }
    }
}

/// What one message left out, for the counters and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Indexed by `SkipReason as usize`.
    pub skipped: [u64; SkipReason::ALL.len()],
    /// Sparkplug B messages whose `seq` did not follow the previous one of their node.
    pub seq_gaps: u64,
    /// The first problem worth a log line (a bad line), if any.
    pub note: Option<String>,
}

impl Tally {
    pub(crate) fn skip(&mut self, reason: SkipReason, n: u64) {
        self.skipped[reason as usize] += n;
    }

    pub(crate) fn note(&mut self, text: impl FnOnce() -> String) {
        if self.note.is_none() {
            self.note = Some(text());
        }
    }
}

/// One value a decoder found, before it becomes a series.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    /// The value's own name from the payload (not yet sanitised); `None` for a plain number.
    pub name: Option<String>,
    /// Labels the payload carries (before topic captures and rule labels).
    pub labels: Vec<(String, String)>,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// One decoded sample and the series it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedSample {
    pub labels: Labels,
    pub sample: Sample,
}

/// The samples of one accepted message and what it left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapped {
    pub samples: Vec<MappedSample>,
    pub tally: Tally,
    /// The matching rule's policy for a full buffer.
    pub overflow: Overflow,
}

/// Maps publishes with fixed rules and payload limit. Holds the Sparkplug B state, so one
/// mapper must see every message (the ingest thread owns it).
#[derive(Debug)]
pub struct Mapper {
    rules: Vec<Rule>,
    max_payload_bytes: usize,
    sparkplug: sparkplug::State,
}

impl Mapper {
    pub fn new(rules: Vec<Rule>, max_payload_bytes: usize) -> Self {
        Self {
            rules,
            max_payload_bytes,
            sparkplug: sparkplug::State::default(),
        }
    }

    /// Maps one publish; `received_ms` is used when the payload carries no timestamp.
    pub fn map(
        &mut self,
        topic: &[u8],
        payload: &[u8],
        received_ms: i64,
    ) -> Result<Mapped, Rejection> {
        // Cheapest check first, so a flood of huge payloads costs no parsing.
        if payload.len() > self.max_payload_bytes {
            return Err(Rejection::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload_bytes,
            });
        }
        let topic =
            std::str::from_utf8(topic).map_err(|_| Rejection::TopicMismatch("not UTF-8"))?;
        let levels: Vec<&str> = topic.split('/').collect();
        let (rule, captures) = self
            .rules
            .iter()
            .find_map(|rule| rule.topic.captures(&levels).map(|c| (rule, c)))
            .ok_or(Rejection::TopicMismatch("no rule matches"))?;
        let mut tally = Tally::default();
        let decoded = match rule.decoder {
            Decoder::Auto => auto(payload, rule, received_ms, &mut tally)?,
            Decoder::Number => vec![number(payload, received_ms)?],
            Decoder::Json => json_values(payload, rule, received_ms, &mut tally)?,
            Decoder::Influx => influx::decode(payload, rule, received_ms, &mut tally)?,
            Decoder::Sparkplug => {
                self.sparkplug
                    .decode(&levels, payload, rule, received_ms, &mut tally)?
            }
        };

        let base = captures.metric.or(rule.metric.as_deref());
        let mut samples = Vec::with_capacity(decoded.len());
        for value in decoded {
            let Some(name) = series_name(base, value.name.as_deref()) else {
                tally.skip(SkipReason::InvalidName, 1);
                continue;
            };
            let labels = merge_labels(value.labels, &captures.labels, &rule.labels);
            samples.push(MappedSample {
                labels: Labels::from_metric(&name, labels)?,
                sample: Sample::new(value.timestamp_ms, value.value),
            });
        }
        Ok(Mapped {
            samples,
            tally,
            overflow: rule.overflow,
        })
    }
}

fn auto(
    payload: &[u8],
    rule: &Rule,
    received_ms: i64,
    tally: &mut Tally,
) -> Result<Vec<Decoded>, Rejection> {
    let text = std::str::from_utf8(payload).map_err(|_| Rejection::NotANumber)?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        json_values(payload, rule, received_ms, tally)
    } else {
        Ok(vec![number(payload, received_ms)?])
    }
}

fn number(payload: &[u8], received_ms: i64) -> Result<Decoded, Rejection> {
    let text = std::str::from_utf8(payload).map_err(|_| Rejection::NotANumber)?;
    let value = text
        .trim()
        .parse::<f64>()
        .map_err(|_| Rejection::NotANumber)?;
    Ok(Decoded {
        name: None,
        labels: Vec::new(),
        timestamp_ms: received_ms,
        value,
    })
}

fn json_values(
    payload: &[u8],
    rule: &Rule,
    received_ms: i64,
    tally: &mut Tally,
) -> Result<Vec<Decoded>, Rejection> {
    let text =
        std::str::from_utf8(payload).map_err(|_| Rejection::InvalidJson("not UTF-8".to_owned()))?;
    let fields = json::decode(text, rule, received_ms, tally)?;
    Ok(fields
        .values
        .into_iter()
        .map(|(name, value)| Decoded {
            name: Some(name),
            labels: Vec::new(),
            timestamp_ms: fields.timestamp_ms,
            value,
        })
        .collect())
}

/// `<base>_<name>`, either part optional, sanitised; `None` if both are missing or empty.
fn series_name(base: Option<&str>, name: Option<&str>) -> Option<String> {
    let joined = match (base, name.filter(|n| !n.is_empty())) {
        (Some(base), Some(name)) => format!("{base}_{name}"),
        (Some(base), None) => base.to_owned(),
        (None, Some(name)) => name.to_owned(),
        (None, None) => return None,
    };
    sanitize_metric_name(&joined)
}

/// Payload labels, then topic captures, then rule labels; a later one replaces an earlier one
/// of the same name.
fn merge_labels(
    payload: Vec<(String, String)>,
    topic: &[(&str, &str)],
    rule: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        Vec::with_capacity(payload.len() + topic.len() + rule.len());
    let later = topic
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .chain(rule.iter().cloned());
    for (name, value) in payload.into_iter().chain(later) {
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some(existing) => existing.1 = value,
            None => out.push((name, value)),
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! Mapping rules: the `[[rules]]` tables of the configuration file, validated into [`Rule`]s.
//!
//! A rule is a topic pattern ([`TopicTemplate`]), a payload decoder and the decoder's options.
//! The agent tries its rules in order and the first whose pattern matches the topic handles
//! the message; `docs/edge-agent.md` holds the user-facing description and the defaults.

use super::topic::{TemplateError, TopicTemplate};
pub use crate::buffer::overflow::Overflow;
use protocols::model::{is_valid_label_name, sanitize_metric_name};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// How a rule reads payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// A plain number, or a JSON object when the payload starts with `{` (or `[`).
    #[default]
    Auto,
    Number,
    Json,
    /// InfluxDB line protocol.
    Influx,
    /// Sparkplug B (protobuf payloads under the `spBv1.0/` namespace).
    Sparkplug,
}

impl Decoder {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Number => "number",
            Self::Json => "json",
            Self::Influx => "influx",
            Self::Sparkplug => "sparkplug",
        }
    }

    /// Whether one payload becomes exactly one value, so the rule must name the metric.
    fn needs_metric(self) -> bool {
        matches!(self, Self::Auto | Self::Number)
    }
}

impl fmt::Display for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a timestamp in a payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampFormat {
    /// JSON: a number is milliseconds, a string is RFC 3339. Line protocol: nanoseconds.
    #[default]
    Auto,
    Seconds,
    Millis,
    Micros,
    Nanos,
    Rfc3339,
}

impl TimestampFormat {
    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "auto" => Self::Auto,
            "s" => Self::Seconds,
            "ms" => Self::Millis,
            "us" => Self::Micros,
            "ns" => Self::Nanos,
            "rfc3339" => Self::Rfc3339,
            _ => return None,
        })
    }

    /// A numeric timestamp in this unit converted to milliseconds (`Auto` and `Rfc3339` take
    /// numbers as milliseconds); `None` when it does not fit.
    pub(crate) fn number_to_ms(self, value: f64) -> Option<i64> {
        let ms = match self {
            Self::Seconds => value * 1e3,
            Self::Auto | Self::Millis | Self::Rfc3339 => value,
            Self::Micros => value / 1e3,
            Self::Nanos => value / 1e6,
        };
        // Seconds keep sub-second digits: round so 1.001 s is 1001 ms, not 1000.999... ms.
        let ms = if self == Self::Seconds {
            ms.round()
        } else {
            ms.trunc()
        };
        (ms.is_finite() && ms.abs() < i64::MAX as f64).then_some(ms as i64)
    }

    /// An integer timestamp in this unit converted to milliseconds, exactly.
    pub(crate) fn integer_to_ms(self, value: i64) -> Option<i64> {
        match self {
            Self::Seconds => value.checked_mul(1000),
            Self::Auto | Self::Millis | Self::Rfc3339 => Some(value),
            Self::Micros => Some(value.div_euclid(1000)),
            Self::Nanos => Some(value.div_euclid(1_000_000)),
        }
    }
}

/// Which values of a multi-value payload are kept and what they are called.
///
/// A path names a value inside the payload: `sensors.temp` in a JSON object, `Inputs/Temp`
/// for a Sparkplug B metric. A filter entry matches that path and everything below it
/// (`sensors` matches `sensors.temp`, not `sensors2`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldFilter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub rename: Vec<(String, String)>,
}

impl FieldFilter {
    /// Whether the value at `path` is kept (separator `sep` between path segments).
    pub(crate) fn keeps(&self, path: &str, sep: char) -> bool {
        let covers = |entry: &String| {
            path.strip_prefix(entry.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(sep))
        };
        (self.include.is_empty() || self.include.iter().any(covers))
            && !self.exclude.iter().any(covers)
    }

    /// The configured name for exactly `path`, if any.
    pub(crate) fn renamed(&self, path: &str) -> Option<&str> {
        self.rename
            .iter()
            .find(|(from, _)| from == path)
            .map(|(_, to)| to.as_str())
    }

    fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.rename.is_empty()
    }
}

/// JSON fields holding the timestamp when `timestamp-field` is not set, in order of precedence.
pub(crate) const DEFAULT_TIMESTAMP_FIELDS: [&str; 2] = ["ts", "timestamp"];

/// Where a JSON payload keeps its timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TimestampField {
    /// `ts`, else `timestamp` (top level; both are never values).
    #[default]
    Default,
    /// Exactly this path.
    Path(String),
    /// None: always the receive time.
    None,
}

/// One validated mapping rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub topic: TopicTemplate,
    pub decoder: Decoder,
    /// A fixed metric name (or name prefix for multi-value decoders), instead of `{metric}`.
    pub metric: Option<String>,
    /// Labels added to every series of this rule; they win over topic and payload labels.
    pub labels: Vec<(String, String)>,
    pub fields: FieldFilter,
    pub timestamp_field: TimestampField,
    pub timestamp_format: TimestampFormat,
    /// What happens to this rule's new messages while the buffer is full.
    pub overflow: Overflow,
}

impl Default for Rule {
    /// `{site}/{device}/{metric}` with the `auto` decoder: the agent's single default rule.
    fn default() -> Self {
        Self {
            topic: TopicTemplate::default(),
            decoder: Decoder::Auto,
            metric: None,
            labels: Vec::new(),
            fields: FieldFilter::default(),
            timestamp_field: TimestampField::Default,
            timestamp_format: TimestampFormat::Auto,
            overflow: Overflow::default(),
        }
    }
}

impl Rule {
    /// The legacy single-template form (`--topic-template`): that pattern, decoder `auto`.
    pub fn from_template(template: &str) -> Result<Self, RuleError> {
        RuleConfig {
            topic: template.to_owned(),
            ..RuleConfig::default()
        }
        .validate()
    }
}

/// Why a rule was refused. The messages name the rule's key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid topic pattern: {0}")]
    Topic(#[from] TemplateError),
    #[error("decoder {0} needs the metric name: put {{metric}} in the topic or set `metric`")]
    NoMetric(Decoder),
    #[error("the metric name comes either from {{metric}} in the topic or from `metric`, not both")]
    MetricTwice,
    #[error("`metric` {0:?} is not a valid metric name")]
    InvalidMetric(String),
    #[error("`labels` key {0:?} is not a valid label name (or starts with __)")]
    InvalidLabel(String),
    #[error("`labels` key {0:?} is also captured by the topic")]
    LabelTwice(String),
    #[error("`{option}` does not apply to decoder {decoder}")]
    NotForDecoder {
        option: &'static str,
        decoder: Decoder,
    },
    #[error("`timestamp-format` {value:?} is not one of {allowed} for decoder {decoder}")]
    TimestampFormat {
        value: String,
        decoder: Decoder,
        allowed: &'static str,
    },
    #[error("`{option}` entry {value:?} is empty or not a valid name")]
    InvalidField { option: &'static str, value: String },
}

/// One `[[rules]]` table as written in the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuleConfig {
    pub topic: String,
    #[serde(default)]
    pub decoder: Decoder,
    pub metric: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    pub timestamp_field: Option<String>,
    pub timestamp_format: Option<String>,
    #[serde(default)]
    pub overflow: Overflow,
}

impl RuleConfig {
    pub fn validate(self) -> Result<Rule, RuleError> {
        let topic: TopicTemplate = self.topic.parse()?;
        let decoder = self.decoder;
        let not_for = |option| RuleError::NotForDecoder { option, decoder };

        let metric = match self.metric {
            Some(_) if topic.has_metric() => return Err(RuleError::MetricTwice),
            Some(m) if protocols::model::is_valid_metric_name(&m) => Some(m),
            Some(m) => return Err(RuleError::InvalidMetric(m)),
            None => None,
        };
        if decoder.needs_metric() && metric.is_none() && !topic.has_metric() {
            return Err(RuleError::NoMetric(decoder));
        }

        let mut labels = Vec::with_capacity(self.labels.len());
        for (name, value) in self.labels {
            if !is_valid_label_name(&name) || name.starts_with("__") {
                return Err(RuleError::InvalidLabel(name));
            }
            if topic.label_names().any(|n| n == name) {
                return Err(RuleError::LabelTwice(name));
            }
            labels.push((name, value));
        }

        let fields = FieldFilter {
            include: self.include,
            exclude: self.exclude,
            rename: self.rename.into_iter().collect(),
        };
        if !fields.is_empty()
            && !matches!(decoder, Decoder::Auto | Decoder::Json | Decoder::Sparkplug)
        {
            let option = if !fields.include.is_empty() {
                "include"
            } else if !fields.exclude.is_empty() {
                "exclude"
            } else {
                "rename"
            };
            return Err(not_for(option));
        }
        for (option, entries) in [("include", &fields.include), ("exclude", &fields.exclude)] {
            if let Some(bad) = entries.iter().find(|e| e.is_empty()) {
                return Err(RuleError::InvalidField {
                    option,
                    value: bad.clone(),
                });
            }
        }
        for (from, to) in &fields.rename {
            // The new name must survive sanitising unchanged, so what is configured is what
            // is stored.
            if from.is_empty() || sanitize_metric_name(to).as_deref() != Some(to.as_str()) {
                return Err(RuleError::InvalidField {
                    option: "rename",
                    value: format!("{from} = {to}"),
                });
            }
        }

        let timestamp_field = match self.timestamp_field {
            None => TimestampField::Default,
            Some(_) if !matches!(decoder, Decoder::Auto | Decoder::Json) => {
                return Err(not_for("timestamp-field"));
            }
            Some(path) if path.is_empty() => TimestampField::None,
            Some(path) => TimestampField::Path(path),
        };
        let timestamp_format = match (self.timestamp_format, decoder) {
            (None, _) => TimestampFormat::Auto,
            (Some(_), Decoder::Number | Decoder::Sparkplug) => {
                return Err(not_for("timestamp-format"));
            }
            (Some(raw), Decoder::Auto | Decoder::Json) => {
                TimestampFormat::parse(&raw).ok_or(RuleError::TimestampFormat {
                    value: raw,
                    decoder,
                    allowed: "auto, s, ms, us, ns, rfc3339",
                })?
            }
            (Some(raw), Decoder::Influx) => match TimestampFormat::parse(&raw) {
                Some(
                    f @ (TimestampFormat::Seconds
                    | TimestampFormat::Millis
                    | TimestampFormat::Micros
                    | TimestampFormat::Nanos),
                ) => f,
                _ => {
                    return Err(RuleError::TimestampFormat {
                        value: raw,
                        decoder,
                        allowed: "s, ms, us, ns",
                    });
                }
            },
        };

        Ok(Rule {
            topic,
            decoder,
            metric,
            labels,
            fields,
            timestamp_field,
            timestamp_format,
            overflow: self.overflow,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Result<Rule, RuleError> {
        let config: RuleConfig = toml::from_str(toml_text).expect("valid TOML");
        config.validate()
    }

    #[test]
    fn defaults() {
        let r = rule(r#"topic = "{site}/{device}/{metric}""#).expect("valid");
        assert_eq!(r, Rule::default());
        assert_eq!(
            Rule::from_template("{site}/{device}/{metric}"),
            Ok(Rule::default())
        );
    }

    #[test]
    fn every_option() {
        let r = rule(
            r#"
            topic = "plant/{line}/+/json"
            decoder = "json"
            metric = "env"
            labels = { source = "plc" }
            include = ["sensors", "battery"]
            exclude = ["sensors.debug"]
            rename = { "sensors.temp" = "temperature" }
            timestamp-field = "meta.time"
            timestamp-format = "s"
            "#,
        )
        .expect("valid");
        assert_eq!(r.decoder, Decoder::Json);
        assert_eq!(r.metric.as_deref(), Some("env"));
        assert_eq!(r.labels, [("source".to_owned(), "plc".to_owned())]);
        assert_eq!(
            r.fields.rename,
            [("sensors.temp".to_owned(), "temperature".to_owned())]
        );
        assert_eq!(
            r.timestamp_field,
            TimestampField::Path("meta.time".to_owned())
        );
        assert_eq!(r.timestamp_format, TimestampFormat::Seconds);
        let off = rule("topic = \"a/{metric}\"\ntimestamp-field = \"\"").expect("valid");
        assert_eq!(off.timestamp_field, TimestampField::None);
    }

    #[test]
    fn refusals() {
        let err = |text: &str| rule(text).err();
        assert_eq!(
            err(r#"topic = "{site}/{device}""#),
            Some(RuleError::NoMetric(Decoder::Auto))
        );
        assert_eq!(
            err(r#"topic = "a/{metric}"
                   metric = "m""#),
            Some(RuleError::MetricTwice)
        );
        assert!(matches!(
            err(r#"topic = "a"
                   metric = "9 lives""#),
            Some(RuleError::InvalidMetric(_))
        ));
        assert!(matches!(
            err(r#"topic = "{site}/{metric}"
                   labels = { site = "x" }"#),
            Some(RuleError::LabelTwice(_))
        ));
        assert!(matches!(
            err(r#"topic = "a/{metric}"
                   labels = { "a-b" = "x" }"#),
            Some(RuleError::InvalidLabel(_))
        ));
        assert!(matches!(
            err(r#"topic = "spBv1.0/#"
                   decoder = "sparkplug"
                   timestamp-format = "ms""#),
            Some(RuleError::NotForDecoder { .. })
        ));
        assert!(matches!(
            err(r#"topic = "a/#"
                   decoder = "influx"
                   include = ["x"]"#),
            Some(RuleError::NotForDecoder {
                option: "include",
                ..
            })
        ));
        assert!(matches!(
            err(r#"topic = "a/#"
                   decoder = "influx"
                   timestamp-format = "rfc3339""#),
            Some(RuleError::TimestampFormat { .. })
        ));
        assert!(matches!(
            err(r#"topic = "a/{metric}"
                   rename = { "x" = "not valid" }"#),
            Some(RuleError::InvalidField { .. })
        ));
        assert!(matches!(
            err(r#"topic = "a/{metric}/#/b""#),
            Some(RuleError::Topic(TemplateError::HashNotLast))
        ));
        let unknown: Result<RuleConfig, _> = toml::from_str("topic = \"a\"\ndecodr = \"json\"");
        assert!(unknown.is_err(), "unknown keys are refused");
        let bad_decoder: Result<RuleConfig, _> = toml::from_str("topic = \"a\"\ndecoder = \"xml\"");
        assert!(bad_decoder.is_err());
    }

    #[test]
    fn field_filter() {
        let f = FieldFilter {
            include: vec!["sensors".to_owned(), "battery".to_owned()],
            exclude: vec!["sensors.debug".to_owned()],
            rename: vec![],
        };
        assert!(f.keeps("sensors.temp", '.'));
        assert!(f.keeps("battery", '.'));
        assert!(!f.keeps("sensors2", '.'));
        assert!(!f.keeps("sensors.debug", '.'));
        assert!(!f.keeps("sensors.debug.x", '.'));
        assert!(!f.keeps("other", '.'));
        assert!(FieldFilter::default().keeps("anything", '.'));
    }

    #[test]
    fn timestamp_units() {
        use TimestampFormat::*;
        assert_eq!(Seconds.number_to_ms(1.001), Some(1001));
        assert_eq!(
            Seconds.integer_to_ms(1_700_000_000),
            Some(1_700_000_000_000)
        );
        assert_eq!(Seconds.integer_to_ms(i64::MAX), None);
        assert_eq!(Millis.number_to_ms(1.9), Some(1));
        assert_eq!(Micros.integer_to_ms(1_500), Some(1));
        assert_eq!(Nanos.integer_to_ms(-1), Some(-1));
        assert_eq!(Nanos.number_to_ms(2.5e6), Some(2));
        assert_eq!(Auto.number_to_ms(1e300), None);
    }
}

//! Topic patterns: which topics a rule takes, and what their levels mean.
//!
//! A pattern splits on `/` into levels, each one of:
//!
//! - `{name}`: exactly one topic level, captured as the label `name`;
//! - `{metric}`: exactly one non-empty topic level, captured as the metric name (at most once);
//! - `+`: exactly one topic level, not captured (MQTT's single-level wildcard);
//! - `#`: only as the last level, any number of remaining levels including none, not captured
//!   (MQTT's multi-level wildcard: `a/#` matches `a`, `a/b` and `a/b/c`);
//! - anything else: a literal that the topic level must equal.
//!
//! As in MQTT, a topic whose first level starts with `$` (`$SYS/...`) is matched only by a
//! literal first level, never by a capture or a wildcard.

use protocols::model::is_valid_label_name;
use std::fmt;
use std::str::FromStr;

/// A validated topic pattern such as `{site}/{device}/{metric}` or `spBv1.0/#`.
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
    AnyOne,
    AnyRest,
}

/// Why a topic pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{{metric}} may appear at most once, found it {0} times")]
    MetricCount(usize),
    #[error("{{{0}}} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __)")]
    InvalidLabel(String),
    #[error("label {{{0}}} is captured twice")]
    DuplicateLabel(String),
    #[error("level {0:?} mixes literal text with braces or wildcards")]
    InvalidLevel(String),
    #[error("# is only allowed as the last level")]
    HashNotLast,
}

/// What a matching topic gave: the metric level (if the pattern has one) and the captured
/// labels in pattern order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Captures<'t> {
    pub metric: Option<&'t str>,
    pub labels: Vec<(&'t str, &'t str)>,
}

impl TopicTemplate {
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern captures the metric name.
    pub(crate) fn has_metric(&self) -> bool {
        self.levels.contains(&Level::Metric)
    }

    /// The label names this pattern captures.
    pub(crate) fn label_names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Label(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Matches a topic already split into levels. An empty metric level does not match.
    pub(crate) fn captures<'t>(&'t self, topic: &[&'t str]) -> Option<Captures<'t>> {
        let mut captures = Captures {
            metric: None,
            labels: Vec::new(),
        };
        let mut rest = topic;
        for (i, want) in self.levels.iter().enumerate() {
            if i == 0
                && !matches!(want, Level::Literal(_))
                && topic.first().is_some_and(|l| l.starts_with('$'))
            {
                return None;
            }
            if *want == Level::AnyRest {
                return Some(captures);
            }
            let (got, tail) = rest.split_first()?;
            rest = tail;
            match want {
                Level::Literal(lit) if lit == got => {}
                Level::Literal(_) => return None,
                Level::Metric if got.is_empty() => return None,
                Level::Metric => captures.metric = Some(got),
                Level::Label(name) => captures.labels.push((name, got)),
                Level::AnyOne | Level::AnyRest => {}
            }
        }
        rest.is_empty().then_some(captures)
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
            if levels.last() == Some(&Level::AnyRest) {
                return Err(TemplateError::HashNotLast);
            }
            let capture = level
                .strip_prefix('{')
                .and_then(|rest| rest.strip_suffix('}'));
            let parsed = match (level, capture) {
                ("+", _) => Level::AnyOne,
                ("#", _) => Level::AnyRest,
                (_, Some("metric")) => Level::Metric,
                (_, Some(name)) => {
                    if !is_valid_label_name(name) || name.starts_with("__") {
                        return Err(TemplateError::InvalidLabel(name.to_owned()));
                    }
                    if labels.contains(&name) {
                        return Err(TemplateError::DuplicateLabel(name.to_owned()));
                    }
                    labels.push(name);
                    Level::Label(name.to_owned())
                }
                (_, None) if level.contains(['{', '}', '+', '#']) => {
                    return Err(TemplateError::InvalidLevel(level.to_owned()));
                }
                (_, None) => Level::Literal(level.to_owned()),
            };
            levels.push(parsed);
        }
        let metrics = levels.iter().filter(|l| **l == Level::Metric).count();
        if metrics > 1 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn template(raw: &str) -> TopicTemplate {
        raw.parse().expect("valid template")
    }

    /// The metric level and the captured labels, owned.
    type Owned = (Option<String>, Vec<(String, String)>);

    fn matches(pattern: &str, topic: &str) -> Option<Owned> {
        let t = template(pattern);
        let levels: Vec<&str> = topic.split('/').collect();
        t.captures(&levels).map(|c| {
            (
                c.metric.map(str::to_owned),
                c.labels
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        })
    }

    #[test]
    fn captures_labels_and_metric() {
        let got = matches("{site}/{device}/{metric}", "s1/d1/temp").expect("matches");
        assert_eq!(got.0.as_deref(), Some("temp"));
        assert_eq!(
            got.1,
            [
                ("site".to_owned(), "s1".to_owned()),
                ("device".to_owned(), "d1".to_owned())
            ]
        );
        assert!(matches("{site}/{device}/{metric}", "s1/d1").is_none());
        assert!(matches("{site}/{device}/{metric}", "s1/d1/t/x").is_none());
        assert!(
            matches("{site}/{device}/{metric}", "s1/d1/").is_none(),
            "an empty metric level does not match"
        );
        assert!(
            matches("{site}/{device}/{metric}", "s1//t").is_some(),
            "an empty label level matches (the label is dropped later)"
        );
    }

    #[test]
    fn mqtt_wildcards() {
        assert!(matches("spBv1.0/#", "spBv1.0/g/NDATA/n").is_some());
        assert!(
            matches("spBv1.0/#", "spBv1.0").is_some(),
            "# matches zero levels"
        );
        assert!(matches("spBv1.0/#", "spBv1.1/g").is_none());
        assert!(matches("#", "a/b/c").is_some());
        assert!(matches("a/+/c", "a/x/c").is_some());
        assert!(matches("a/+/c", "a/c").is_none());
        assert!(matches("a/+/c", "a/x/y/c").is_none());
        let (metric, labels) =
            matches("plant/{line}/+/{metric}/#", "plant/l1/x/temp/a/b").expect("matches");
        assert_eq!(metric.as_deref(), Some("temp"));
        assert_eq!(labels, [("line".to_owned(), "l1".to_owned())]);
    }

    #[test]
    fn dollar_topics_need_a_literal_first_level() {
        assert!(matches("#", "$SYS/broker/load").is_none());
        assert!(matches("+/broker/load", "$SYS/broker/load").is_none());
        assert!(matches("{a}/broker/{metric}", "$SYS/broker/load").is_none());
        assert!(matches("$SYS/#", "$SYS/broker/load").is_some());
    }

    #[test]
    fn validation() {
        let err = |t: &str| t.parse::<TopicTemplate>().err();
        assert_eq!(err("{site}/{device}"), None, "{{metric}} is optional here");
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
            err("a+/{metric}"),
            Some(TemplateError::InvalidLevel(_))
        ));
        assert!(matches!(
            err("x{a}/{metric}"),
            Some(TemplateError::InvalidLevel(_))
        ));
        assert_eq!(err("#/{metric}"), Some(TemplateError::HashNotLast));
        let ok = template("/plant/{line}/{metric}");
        assert_eq!(ok.to_string(), "/plant/{line}/{metric}");
        assert_eq!(
            template("{site}/{device}/{metric}"),
            TopicTemplate::default()
        );
    }
}

//! What a query returns: one Rust type per PromQL value type.
//!
//! Result series carry a [`LabelSet`] rather than [`protocols::Labels`]: stored series always
//! have a metric name, but query results need not (a scalar in a range query is the series
//! `{}`, and operators that land later drop `__name__`).

use protocols::model::METRIC_NAME_LABEL;
use protocols::{Label, Labels, Sample};
use std::fmt;

/// The name of the mark of [`LabelSet::drop_name_later`]: not a valid label name, so no
/// selector, matcher or grouping can name it, and it sorts before every real label.
pub(crate) const DROP_NAME_MARK: &str = "\u{0}drop_name";

/// The labels of one result series: sorted by name, names unique, values non-empty.
///
/// The derived order compares label by label (name, then value), a shorter set first when one
/// is a prefix of the other: the order of Prometheus' `labels.Compare`, used to sort results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSet(Vec<Label>);

impl LabelSet {
    /// The empty set, `{}`.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels whose names `keep` accepts.
    pub(crate) fn filter(&self, mut keep: impl FnMut(&str) -> bool) -> Self {
        Self(self.0.iter().filter(|l| keep(&l.name)).cloned().collect())
    }

    /// The same set without `__name__` (and without the mark of [`Self::drop_name_later`]):
    /// for the operators that drop the name at once even in Prometheus 3 (`+`, `*`, ...
    /// between two vectors).
    pub(crate) fn without_metric_name(&self) -> Self {
        self.filter(|name| name != METRIC_NAME_LABEL && name != DROP_NAME_MARK)
    }

    /// The same set, marked to lose `__name__` when the query's evaluation ends (Prometheus 3's
    /// delayed name removal): functions such as `rate` keep the name meanwhile, so that
    /// `label_replace` can still read it and two series that differ only by name stay apart.
    /// The mark is a label whose name no PromQL label can have, so it travels with the labels
    /// through every operator; grouping and matching leave it out.
    pub(crate) fn drop_name_later(&self) -> Self {
        self.with(DROP_NAME_MARK, "1")
    }

    /// Whether [`Self::drop_name_later`] marked this set.
    pub(crate) fn drops_name(&self) -> bool {
        self.get(DROP_NAME_MARK).is_some()
    }

    /// The same set without the mark: the name stays (`label_replace` that writes `__name__`).
    pub(crate) fn keeping_name(&self) -> Self {
        self.with(DROP_NAME_MARK, "")
    }

    /// The labels a query returns: a marked set loses `__name__` and the mark.
    pub(crate) fn finished(&self) -> Self {
        if self.drops_name() {
            self.without_metric_name()
        } else {
            self.clone()
        }
    }

    /// The same set with label `name` set to `value`; an empty value removes the label, as
    /// Prometheus' label builder does.
    pub(crate) fn with(&self, name: &str, value: &str) -> Self {
        let mut labels = self.0.clone();
        match labels.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                labels.remove(i);
            }
            Ok(i) => labels[i].value = value.to_owned(),
            Err(_) if value.is_empty() => {}
            Err(i) => labels.insert(i, Label::new(name, value)),
        }
        Self(labels)
    }
}

impl From<Labels> for LabelSet {
    fn from(labels: Labels) -> Self {
        // `Labels` is already canonical: sorted, unique, no empty values.
        Self(labels.into())
    }
}

impl fmt::Display for LabelSet {
    /// `{a="1", b="2"}`, names in order, including `__name__`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        // An error message may show a set in the middle of evaluation: not the mark.
        let shown = self.0.iter().filter(|l| l.name != DROP_NAME_MARK);
        for (i, l) in shown.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

/// A single number at the evaluation time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scalar {
    pub timestamp_ms: i64,
    pub value: f64,
}

/// A string at the evaluation time (only a bare string literal produces one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringValue {
    pub timestamp_ms: i64,
    pub value: String,
}

/// One element of an instant vector: a series and its value at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantSample {
    pub metric: LabelSet,
    /// The evaluation time, not the time of the stored sample the value came from.
    pub timestamp_ms: i64,
    pub value: f64,
}

/// One element of a matrix: a series and its points in ascending time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub metric: LabelSet,
    pub points: Vec<Sample>,
}

/// An instant vector: at most one sample per series, all at the same time.
pub type Vector = Vec<InstantSample>;

/// A range vector (instant query on `x[5m]`) or the result of a range query.
pub type Matrix = Vec<Series>;

/// The result of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    String(StringValue),
    Vector(Vector),
    Matrix(Matrix),
}

impl Value {
    /// The Prometheus name of the value's type, as in the API's `resultType`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(metric: &str, labels: &[(&str, &str)]) -> LabelSet {
        Labels::from_metric(metric, labels.iter().copied())
            .expect("valid labels")
            .into()
    }

    #[test]
    fn order_is_label_by_label_like_prometheus() {
        let mut sets = [
            set("b", &[]),
            set("a", &[("x", "2")]),
            set("a", &[]),
            set("a", &[("x", "10")]),
            LabelSet::empty(),
        ];
        sets.sort();
        let shown: Vec<String> = sets.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "{}",
                r#"{__name__="a"}"#,
                r#"{__name__="a", x="10"}"#,
                r#"{__name__="a", x="2"}"#,
                r#"{__name__="b"}"#,
            ]
        );
        assert_eq!(sets[2].get("x"), Some("10"));
        assert_eq!(sets[2].get("y"), None);
    }
}

//! The data model: every sample belongs to one series of one tenant.
//!
//! A series is identified by its tenant plus its canonical label set: labels sorted by name,
//! unique names, the metric name stored as the `__name__` label, and no label with an empty value
//! (Prometheus treats an empty label value as an absent label). [`SeriesId`] is a stable 64-bit
//! hash of exactly that canonical form (see [`SeriesId::of`]); it must never change across
//! versions, because storage keys and shard placement are derived from it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted label or metric name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest accepted label value, in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most labels (including `__name__`) one series may carry.
pub const MAX_LABELS: usize = 64;
/// Longest accepted tenant name, in bytes.
pub const MAX_TENANT_BYTES: usize = 64;

/// The label that carries the metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// Label names refused on every series: Prometheus 3's experimental type-and-unit labels.
pub const RESERVED_LABEL_NAMES: [&str; 2] = ["__type__", "__unit__"];

/// Why a name, label set or tenant was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid metric name {0:?}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName(String),
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabelName(String),
    /// `__type__` and `__unit__`: Prometheus 3's experimental type-and-unit labels, which
    /// that feature overwrites with metadata and PromQL drops like `__name__`. Stored as
    /// plain labels they would mean something else here than there, so they are refused.
    #[error(
        "label name {0:?} is reserved for Prometheus' experimental type-and-unit labels (--enable-feature=type-and-unit-labels), which are not supported"
    )]
    ReservedLabelName(String),
    #[error("label {name:?} has a value of {len} bytes, more than the {max} allowed")]
    ValueTooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("label name {0:?} is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong(String),
    #[error("duplicate label name {0:?}")]
    DuplicateLabel(String),
    #[error("series has {0} labels, more than the {MAX_LABELS} allowed")]
    TooManyLabels(usize),
    #[error("series has no metric name (__name__ label)")]
    MissingMetricName,
    #[error("invalid tenant {0:?}: must be 1-64 characters of [a-zA-Z0-9_-]")]
    InvalidTenant(String),
}

/// A tenant: the unit of isolation. Every series belongs to exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tenant(String);

impl Tenant {
    /// The tenant used when none is configured.
    pub const DEFAULT: &'static str = "default";

    pub fn new(name: impl Into<String>) -> Result<Self, ModelError> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_TENANT_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(name))
        } else {
            Err(ModelError::InvalidTenant(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Tenant {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Tenant {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Tenant> for String {
    fn from(value: Tenant) -> Self {
        value.0
    }
}

/// One label: a name and a non-empty value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A canonical, validated label set that includes the metric name as `__name__`.
///
/// Invariants: sorted by name, names unique, no empty values, `__name__` present and valid,
/// every other name valid and not one of [`RESERVED_LABEL_NAMES`], lengths within the limits
/// above. Other names starting with `__` (`__address__` left over from relabelling, say) are
/// ordinary labels, as Prometheus stores them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "Vec<Label>", into = "Vec<Label>")]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a canonical label set from a metric name and further labels in any order.
    /// Labels with empty values are dropped, as Prometheus does.
    pub fn from_metric<I, N, V>(metric: &str, labels: I) -> Result<Self, ModelError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        let mut all: Vec<Label> = labels.into_iter().map(|(n, v)| Label::new(n, v)).collect();
        all.push(Label::new(METRIC_NAME_LABEL, metric));
        Self::try_from(all)
    }

    /// The metric name (the `__name__` label's value).
    pub fn metric_name(&self) -> &str {
        // Invariant: `__name__` is always present (checked at construction).
        self.get(METRIC_NAME_LABEL).unwrap_or_default()
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

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form: `name{a="1",b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metric_name())?;
        f.write_str("{")?;
        let mut first = true;
        for l in self.0.iter().filter(|l| l.name != METRIC_NAME_LABEL) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        f.write_str("}")
    }
}

impl TryFrom<Vec<Label>> for Labels {
    type Error = ModelError;

    fn try_from(labels: Vec<Label>) -> Result<Self, Self::Error> {
        Self::check(labels).map_err(|(e, _)| e)
    }
}

impl Labels {
    /// As `Labels::try_from`, but a refused set is handed back with the error (without its
    /// empty-valued labels, sorted by name), so a caller can still describe what it refused
    /// without having kept a copy.
    pub fn check(mut labels: Vec<Label>) -> Result<Self, (ModelError, Vec<Label>)> {
        labels.retain(|l| !l.value.is_empty());
        labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        match Self::problem(&labels) {
            None => Ok(Self(labels)),
            Some(e) => Err((e, labels)),
        }
    }

    /// What breaks the invariants in `labels` (sorted, no empty values), if anything.
    fn problem(labels: &[Label]) -> Option<ModelError> {
        if labels.len() > MAX_LABELS {
            return Some(ModelError::TooManyLabels(labels.len()));
        }
        let mut has_name = false;
        for (i, l) in labels.iter().enumerate() {
            if i > 0 && labels[i - 1].name == l.name {
                return Some(ModelError::DuplicateLabel(l.name.clone()));
            }
            if l.name.len() > MAX_NAME_BYTES {
                return Some(ModelError::NameTooLong(l.name.clone()));
            }
            if l.value.len() > MAX_VALUE_BYTES {
                return Some(ModelError::ValueTooLong {
                    name: l.name.clone(),
                    len: l.value.len(),
                    max: MAX_VALUE_BYTES,
                });
            }
            if l.name == METRIC_NAME_LABEL {
                if !is_valid_metric_name(&l.value) {
                    return Some(ModelError::InvalidMetricName(l.value.clone()));
                }
                has_name = true;
            } else if !is_valid_label_name(&l.name) {
                return Some(ModelError::InvalidLabelName(l.name.clone()));
            } else if RESERVED_LABEL_NAMES.contains(&l.name.as_str()) {
                return Some(ModelError::ReservedLabelName(l.name.clone()));
            }
        }
        (!has_name).then_some(ModelError::MissingMetricName)
    }
}

impl From<Labels> for Vec<Label> {
    fn from(value: Labels) -> Self {
        value.0
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Replaces every character that is not valid in a metric name by `_`, and prefixes `_` when
/// the first character is a digit. Used to turn MQTT topic levels and JSON field names into
/// metric names. Returns `None` for an empty input.
pub fn sanitize_metric_name(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(raw.len() + 1);
    if raw.as_bytes()[0].is_ascii_digit() {
        out.push('_');
    }
    out.extend(raw.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            c
        } else {
            '_'
        }
    }));
    Some(out)
}

/// Stable identity of a series within the whole system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesId(pub u64);

impl SeriesId {
    /// XXH3-64 (seed 0) over `tenant 0xFF (name 0xFE value 0xFF)*` of the canonical label set.
    /// 0xFE and 0xFF never occur in UTF-8, so the encoding is unambiguous. Frozen: changing it
    /// would orphan stored data.
    pub fn of(tenant: &Tenant, labels: &Labels) -> Self {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(tenant.as_str().as_bytes());
        h.update(&[0xFF]);
        for l in labels.iter() {
            h.update(l.name.as_bytes());
            h.update(&[0xFE]);
            h.update(l.value.as_bytes());
            h.update(&[0xFF]);
        }
        Self(h.digest())
    }
}

/// How many bits of a series id select its shard: 2^8 = 256 shards, fixed for the life of a
/// cluster (a later version moves whole shards between nodes, never re-hashes series).
pub const SHARD_BITS: u32 = 8;
/// The number of shards.
pub const SHARD_COUNT: u32 = 1 << SHARD_BITS;

/// A shard: the unit of placement and replication. A series' shard is the top [`SHARD_BITS`]
/// of its id (a hash of tenant and labels), so every shard's series ids form one contiguous
/// range, and so do its keys in every store keyed by series id first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The smallest and largest series id in this shard.
    pub fn series_range(self) -> (SeriesId, SeriesId) {
        let shift = 64 - SHARD_BITS;
        let first = u64::from(self.0) << shift;
        (SeriesId(first), SeriesId(first | ((1u64 << shift) - 1)))
    }
}

impl SeriesId {
    pub fn shard(self) -> ShardId {
        // Lossless: the shift leaves SHARD_BITS (≤ 16) bits.
        ShardId((self.0 >> (64 - SHARD_BITS)) as u16)
    }
}

impl fmt::Display for SeriesId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One reading: milliseconds since the Unix epoch (UTC) and a value. Every f64 bit pattern is
/// valid, including NaN payloads such as Prometheus' stale marker.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Sample {
    pub timestamp_ms: i64,
    pub value: f64,
}

impl Sample {
    pub fn new(timestamp_ms: i64, value: f64) -> Self {
        Self {
            timestamp_ms,
            value,
        }
    }
}

impl PartialEq for Sample {
    /// Bit-exact: NaN equals NaN with the same payload, -0.0 differs from 0.0.
    fn eq(&self, other: &Self) -> bool {
        self.timestamp_ms == other.timestamp_ms && self.value.to_bits() == other.value.to_bits()
    }
}

impl Eq for Sample {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_canonical_and_validated() {
        let l = Labels::from_metric("temp", [("site", "s1"), ("device", "d1"), ("empty", "")])
            .expect("valid labels");
        let names: Vec<_> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "device", "site"]);
        assert_eq!(l.metric_name(), "temp");
        assert_eq!(l.to_string(), r#"temp{device="d1",site="s1"}"#);

        assert!(matches!(
            Labels::from_metric("1temp", [("a", "b")]),
            Err(ModelError::InvalidMetricName(_))
        ));
        assert!(matches!(
            Labels::from_metric("temp", [("a-b", "x")]),
            Err(ModelError::InvalidLabelName(_))
        ));
        // Other `__` names are ordinary labels, as in Prometheus; only the type-and-unit
        // labels are refused.
        let relabelled = Labels::from_metric("temp", [("__address__", "10.0.0.1:9100")])
            .expect("a __ label is accepted");
        assert_eq!(relabelled.get("__address__"), Some("10.0.0.1:9100"));
        for name in ["__type__", "__unit__"] {
            let err = Labels::from_metric("temp", [(name, "x")]).expect_err(name);
            assert_eq!(err, ModelError::ReservedLabelName(name.into()));
            assert!(err.to_string().contains("type-and-unit"), "{err}");
        }
        let long = format!("__{}", "x".repeat(MAX_NAME_BYTES));
        assert!(matches!(
            Labels::from_metric("temp", [(long.as_str(), "x")]),
            Err(ModelError::NameTooLong(_))
        ));
        assert!(matches!(
            Labels::from_metric("temp", [("a", "1"), ("a", "2")]),
            Err(ModelError::DuplicateLabel(_))
        ));
    }

    #[test]
    fn series_id_depends_on_tenant_and_every_label() {
        let t = Tenant::default();
        let a = Labels::from_metric("m", [("a", "1")]).expect("valid");
        let b = Labels::from_metric("m", [("a", "2")]).expect("valid");
        let a2 = Labels::from_metric("m", [("a", "1")]).expect("valid");
        assert_eq!(SeriesId::of(&t, &a), SeriesId::of(&t, &a2));
        assert_ne!(SeriesId::of(&t, &a), SeriesId::of(&t, &b));
        let other = Tenant::new("other").expect("valid");
        assert_ne!(SeriesId::of(&t, &a), SeriesId::of(&other, &a));
        // Frozen value: a change here orphans stored data.
        assert_eq!(SeriesId::of(&t, &a).0, 3_769_357_801_614_841_143);
    }

    #[test]
    fn shards_are_contiguous_id_ranges() {
        for shard in [0u16, 1, 127, (SHARD_COUNT - 1) as u16] {
            let (first, last) = ShardId(shard).series_range();
            assert_eq!(first.shard(), ShardId(shard));
            assert_eq!(last.shard(), ShardId(shard));
            if shard > 0 {
                assert_eq!(SeriesId(first.0 - 1).shard(), ShardId(shard - 1));
            }
        }
        // Real ids spread over the shards.
        let t = Tenant::default();
        let shards: std::collections::HashSet<_> = (0..2000)
            .map(|i| {
                let l = Labels::from_metric("m", [("i", i.to_string())]).expect("valid");
                SeriesId::of(&t, &l).shard()
            })
            .collect();
        assert!(shards.len() > 240, "{} shards used", shards.len());
    }

    #[test]
    fn sanitize_makes_valid_names() {
        assert_eq!(
            sanitize_metric_name("temp-1.x").as_deref(),
            Some("temp_1_x")
        );
        assert_eq!(sanitize_metric_name("1abc").as_deref(), Some("_1abc"));
        assert_eq!(sanitize_metric_name(""), None);
        assert!(is_valid_metric_name(
            &sanitize_metric_name("ü/é").unwrap_or_default()
        ));
    }

    #[test]
    fn tenant_rules() {
        assert!(Tenant::new("acme-prod_1").is_ok());
        assert!(Tenant::new("").is_err());
        assert!(Tenant::new("a b").is_err());
        assert_eq!(Tenant::default().as_str(), "default");
    }
}

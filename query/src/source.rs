//! The data-source trait the evaluator reads through.

use crate::matcher::Matcher;
use protocols::{Labels, Sample, SeriesId, Tenant};

/// A series that matched a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRef {
    pub id: SeriesId,
    pub labels: Labels,
}

#[derive(Debug, thiserror::Error)]
pub enum DataSourceError {
    /// Storage failed; the query cannot be answered now.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed a checksum or could not be decoded.
    #[error("corrupt data in series {series}: {detail}")]
    Corrupt { series: SeriesId, detail: String },
}

/// Read access to stored series, scoped by tenant.
///
/// Implementations must be cheap to call concurrently from several queries.
pub trait DataSource: Send + Sync {
    /// Every series of `tenant` whose labels satisfy all `matchers` (a label that is absent
    /// matches as the empty string, as in Prometheus). Order is unspecified.
    fn select_series(
        &self,
        tenant: &Tenant,
        matchers: &[Matcher],
    ) -> Result<Vec<SeriesRef>, DataSourceError>;

    /// Samples of one series with `start_ms <= timestamp <= end_ms`, ascending, one per
    /// timestamp.
    fn samples(
        &self,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Sample>, DataSourceError>;

    /// [`Self::samples`] of a series known to belong to `tenant` (it came from
    /// [`Self::select_series`] for that tenant): lets a source skip finding the owner again.
    /// The default ignores the hint.
    fn samples_of(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Sample>, DataSourceError> {
        let _ = tenant;
        self.samples(series, start_ms, end_ms)
    }

    /// The latest sample (a stale marker included) of a series of `tenant` with `start_ms <=
    /// timestamp <= end_ms`: all that a vector selector or `last_over_time` needs at a single
    /// evaluation time. The default reads the window; a source with a last-value cache can
    /// answer without reading chunks, but must answer exactly what the default would.
    fn latest_sample(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Option<Sample>, DataSourceError> {
        Ok(self.samples_of(tenant, series, start_ms, end_ms)?.pop())
    }

    /// Whether a series of `tenant` holds a sample with `start_ms <= timestamp <= end_ms`
    /// (what `start` and `end` of the series and label endpoints filter on). The default
    /// reads the samples; a source can answer from its block headers.
    fn has_samples(
        &self,
        tenant: &Tenant,
        series: SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<bool, DataSourceError> {
        Ok(!self
            .samples_of(tenant, series, start_ms, end_ms)?
            .is_empty())
    }

    /// Every label name used by any series of `tenant`, sorted, including `__name__`.
    fn label_names(&self, tenant: &Tenant) -> Result<Vec<String>, DataSourceError>;

    /// Every value of label `name` across the series of `tenant`, sorted.
    fn label_values(&self, tenant: &Tenant, name: &str) -> Result<Vec<String>, DataSourceError>;
}

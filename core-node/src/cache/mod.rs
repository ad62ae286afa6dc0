//! The range-result cache: `query_range` answers kept in step-aligned extents, so that a
//! dashboard refreshed every few seconds computes only its recent tail. (The last-value cache
//! is storage's: `storage::last_value`.)
//!
//! # Extents
//!
//! A range query evaluates at `start + k * step`. Its steps lie on the grid `phase + i * step`
//! (`phase = start mod step`); an *extent* is `EXTENT_STEPS` consecutive steps of that grid,
//! `i` from `n * K` to `n * K + K - 1`. Every PromQL step is evaluated on its own (its value
//! depends on the stored samples and its own time; queries with `@` are not cached, see
//! [`query::reach`]), so an answer is the concatenation of its extents' answers, cut to the
//! request's bounds. Entries are keyed by (tenant, query text, step, phase, extent): one
//! tenant never sees another's, and two spellings of one query are two entries.
//!
//! # What may be cached, and when it goes stale
//!
//! A step at `t` reads samples in `[t - back, t + forward]` ([`query::Reach`]) of the metrics
//! the query names. An extent is *final*, and only then cached, when the end of what it
//! reads lies more than the settle time ([`RangeCacheOptions::settle`], default 1 minute)
//! before "now": samples that arrive in order, at "now", never land in a final extent, so
//! the tail of a dashboard is recomputed on every refresh and the rest comes from the cache.
//! (Caches that cannot invalidate must wait until no more samples can arrive: Thanos' and
//! Cortex's query frontends 1 minute, VictoriaMetrics 5. Here the settle time only keeps
//! writes that arrive in order from invalidating anything; later ones invalidate exactly
//! what they touch, so a short one is safe.)
//! Samples that land earlier (late data from an agent that was offline, a backfill) and
//! retention drops invalidate every cached extent of that tenant whose read span overlaps
//! their time span and whose query names their metric (or names none); the storage writer
//! reports them after applying them ([`RangeCache::written`]), before it acknowledges.
//! A result being computed while such a write is applied is not stored: every computation
//! records the invalidation sequence it started at and checks the invalidations since
//! before it stores, and it raises the guard below which the writer reports writes before
//! it reads anything.
//!
//! # Memory
//!
//! Bounded by [`RangeCacheOptions::max_bytes`] (estimated sizes: labels, 16 bytes a point,
//! overheads), least recently used extents evicted first. A single result larger than an
//! eighth of the budget is not cached.
//!
//! # Limits
//!
//! The engine's `max_samples` and timeout apply to what is computed, not to the cached part:
//! a query that would exceed them uncached can succeed from the cache.

mod range;
mod store;
#[cfg(test)]
mod tests;

pub use range::{RangeCache, RangeStats};
pub use store::Written;

use std::time::Duration;

/// Steps per extent at least; more when the step is short, so an extent spans at least
/// [`EXTENT_MIN_SPAN_MS`].
pub const EXTENT_MIN_STEPS: i64 = 10;
pub const EXTENT_MIN_SPAN_MS: i64 = 5 * 60 * 1000;

/// The default of `--range-cache-bytes`.
pub const DEFAULT_RANGE_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// The default of `--range-cache-settle`.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct RangeCacheOptions {
    /// Most bytes the cached extents may take; 0 turns the cache off.
    pub max_bytes: u64,
    /// An extent is cached only once everything it reads is older than this.
    pub settle: Duration,
}

impl Default for RangeCacheOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_RANGE_CACHE_BYTES,
            settle: DEFAULT_SETTLE,
        }
    }
}

/// `updraft_core_range_cache_extents_total{outcome="hit"|"miss"|"uncacheable"}`: extents
/// a query took from the cache, computed, or computed without being cacheable (near now).
pub const EXTENTS: &str = "updraft_core_range_cache_extents_total";
pub const QUERIES: &str = "updraft_core_range_cache_queries_total";
pub const BYTES: &str = "updraft_core_range_cache_bytes";
pub const ENTRIES: &str = "updraft_core_range_cache_entries";
pub const EVICTIONS: &str = "updraft_core_range_cache_evictions_total";
pub const INVALIDATIONS: &str = "updraft_core_range_cache_invalidated_total";

/// Registers the cache's metrics at 0.
pub fn register_metrics(options: &RangeCacheOptions) {
    for outcome in ["hit", "miss", "uncacheable"] {
        metrics::counter!(EXTENTS, "outcome" => outcome).absolute(0);
    }
    for path in ["cached", "bypass", "uncacheable"] {
        metrics::counter!(QUERIES, "path" => path).absolute(0);
    }
    metrics::counter!(EVICTIONS).absolute(0);
    metrics::counter!(INVALIDATIONS).absolute(0);
    metrics::gauge!(BYTES).set(0.0);
    metrics::gauge!(ENTRIES).set(0.0);
    metrics::gauge!("updraft_core_range_cache_budget_bytes").set(options.max_bytes as f64);
}

/// The hash a write's metric name and a query's named metrics are compared by.
pub fn name_hash(name: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x5eed).hash_one(name)
}

/// A data source read past the last-value cache (a request that bypasses the caches): every
/// call goes to `0` but [`query::DataSource::latest_sample`], which reads the window.
pub struct Uncached(pub std::sync::Arc<dyn query::DataSource>);

impl query::DataSource for Uncached {
    fn select_series(
        &self,
        tenant: &protocols::Tenant,
        matchers: &[query::Matcher],
    ) -> Result<Vec<query::SeriesRef>, query::DataSourceError> {
        self.0.select_series(tenant, matchers)
    }

    fn samples(
        &self,
        series: protocols::SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<protocols::Sample>, query::DataSourceError> {
        self.0.samples(series, start_ms, end_ms)
    }

    fn samples_of(
        &self,
        tenant: &protocols::Tenant,
        series: protocols::SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<protocols::Sample>, query::DataSourceError> {
        self.0.samples_of(tenant, series, start_ms, end_ms)
    }

    fn has_samples(
        &self,
        tenant: &protocols::Tenant,
        series: protocols::SeriesId,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<bool, query::DataSourceError> {
        self.0.has_samples(tenant, series, start_ms, end_ms)
    }

    fn label_names(
        &self,
        tenant: &protocols::Tenant,
    ) -> Result<Vec<String>, query::DataSourceError> {
        self.0.label_names(tenant)
    }

    fn label_values(
        &self,
        tenant: &protocols::Tenant,
        name: &str,
    ) -> Result<Vec<String>, query::DataSourceError> {
        self.0.label_values(tenant, name)
    }
}

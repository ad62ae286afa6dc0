//! [`EngineOptions`]: the limits and constants of evaluation. Its own module, below both the
//! engine and the evaluator that read it.

use std::time::Duration;

/// Limits and constants of query evaluation. The defaults are Prometheus' defaults.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back from the evaluation time a vector selector looks for a sample; the window
    /// is left-open, `(t - lookback, t]`. Prometheus' `--query.lookback-delta`: 5 minutes.
    pub lookback_delta_ms: i64,
    /// Most samples one query may load into memory; past it the query fails rather than
    /// exhausting the node. Prometheus' `--query.max-samples`: 50,000,000.
    pub max_samples: usize,
    /// Longest a query may evaluate. Prometheus' `--query.timeout`: 2 minutes.
    pub timeout: Duration,
    /// The step of a subquery that names none (`x[1h:]`): Prometheus uses its
    /// `global.evaluation_interval`, 1 minute by default. Must be positive.
    pub default_subquery_step_ms: i64,
    /// Most threads one selector's series are evaluated on (at least 64 series each); the
    /// answer is the same whatever the number. Default: the cores available.
    pub parallelism: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            default_subquery_step_ms: 60_000,
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

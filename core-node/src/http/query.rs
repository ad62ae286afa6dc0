//! `/api/v1/query` and `/api/v1/query_range`.
//!
//! Parameters: `query`; `time` (instant, default now); `start`, `end`, `step` (range, all
//! required); `timeout` (optional, caps the engine's own timeout). Others (`stats`,
//! `lookback_delta`, `limit`) are ignored.
//!
//! On a clustered node, `partial_response=true` answers without the shard groups no replica
//! of which can be read, with a warning naming each (docs/cluster.md); without it such a query
//! fails with 503. `max_staleness=DURATION` lets a replica answer without a read barrier when
//! its last one started at most that long ago (reads go on without a leader).
//!
//! Instant queries read latest samples through storage's last-value cache, range queries go
//! through the range-result cache ([`crate::cache`]); a request with `nocache=1` (or `true`)
//! or a `Cache-Control: no-cache` / `no-store` header bypasses both. The answer is the same
//! either way.

use super::auth::Caller;
use super::error::ApiError;
use super::params::{Params, parse_duration_ms, parse_time};
use super::response::Success;
use super::{Api, encode};
use crate::cache::Uncached;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use query::{Engine, QueryError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(crate) async fn instant(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Success, ApiError> {
    let time_ms = match params.get("time") {
        Some(raw) => parse_time(raw).map_err(|e| {
            ApiError::bad_param("time", format!("Invalid time value for 'time': {e}"))
        })?,
        None => now_ms(),
    };
    let engine = engine_for(&api, &params)?;
    let query = params.get("query").unwrap_or_default().to_owned();
    let (mut source, tenant) = (api.state.source.clone(), caller.tenant().clone());
    let warnings = partial_source(&api, &params).map(|(partial, warnings)| {
        source = partial;
        warnings
    });
    if bypass_caches(&headers, &params) {
        source = Arc::new(Uncached(source));
    }
    let data = api
        .blocking(move || {
            let value = engine
                .instant(source.as_ref(), &tenant, &query, time_ms)
                .map_err(ApiError::from_query)?;
            // Encoding a large result takes a while too: keep it off the runtime.
            Ok(encode::query_success(&value))
        })
        .await?;
    Ok(with_warnings(Success::complete(data), warnings))
}

pub(crate) async fn range(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Success, ApiError> {
    // Checks in Prometheus' order, so the same bad request gets the same error.
    let start_ms = params.required_time("start")?;
    let end_ms = params.required_time("end")?;
    if end_ms < start_ms {
        return Err(ApiError::from_query(QueryError::EndBeforeStart));
    }
    let step_ms = parse_duration_ms(params.get("step").unwrap_or_default())
        .map_err(|e| ApiError::bad_param("step", e))?;
    query::validate_range(start_ms, end_ms, step_ms).map_err(ApiError::from_query)?;
    let engine = engine_for(&api, &params)?;
    let query = params.get("query").unwrap_or_default().to_owned();
    let (mut source, tenant) = (api.state.source.clone(), caller.tenant().clone());
    let warnings = partial_source(&api, &params).map(|(partial, warnings)| {
        source = partial;
        warnings
    });
    let cache = match bypass_caches(&headers, &params) {
        true => {
            metrics::counter!(crate::cache::QUERIES, "path" => "bypass").increment(1);
            None
        }
        false => api.state.range_cache.clone(),
    };
    let data = api
        .blocking(move || {
            let value = match &cache {
                Some(cache) => cache.range(
                    &engine,
                    source.as_ref(),
                    &tenant,
                    &query,
                    start_ms,
                    end_ms,
                    step_ms,
                ),
                None => {
                    let source = Uncached(source);
                    engine.range(&source, &tenant, &query, start_ms, end_ms, step_ms)
                }
            }
            .map_err(ApiError::from_query)?;
            // Encoding a large result takes a while too: keep it off the runtime.
            Ok(encode::query_success(&value))
        })
        .await?;
    Ok(with_warnings(Success::complete(data), warnings))
}

/// Where a partial answer's warnings are collected.
type Warnings = Arc<std::sync::Mutex<Vec<String>>>;

/// On a clustered node with `partial_response=true` and/or `max_staleness=DURATION`: a source
/// that leaves out the shard groups it cannot read (and where their warnings go), and that
/// accepts replicas whose last read barrier is at most that old (docs/cluster.md).
fn partial_source(api: &Api, params: &Params) -> Option<(Arc<dyn ::query::DataSource>, Warnings)> {
    let partial = params
        .get("partial_response")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    // A malformed bound reads as none: the query is then answered fresh, never staler.
    let staleness = params
        .get("max_staleness")
        .and_then(|v| parse_duration_ms(v).ok())
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis);
    let node = api
        .state
        .cluster
        .clone()
        .filter(|_| partial || staleness.is_some())?;
    let runtime = tokio::runtime::Handle::current();
    let (source, warnings) = if partial {
        crate::cluster::reads::ClusterSource::partial(node, runtime)
    } else {
        (
            crate::cluster::reads::ClusterSource::new(node, runtime),
            Warnings::default(),
        )
    };
    Some((Arc::new(source.with_staleness(staleness)), warnings))
}

fn with_warnings(
    mut answer: Success,
    warnings: Option<Arc<std::sync::Mutex<Vec<String>>>>,
) -> Success {
    let taken = warnings
        .map(|w| std::mem::take(&mut *w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
        .unwrap_or_default();
    for w in taken {
        answer = answer.with_warning(w);
    }
    answer
}

/// The engine, with the request's `timeout` when it sets a shorter one.
fn engine_for(api: &Api, params: &Params) -> Result<Engine, ApiError> {
    let Some(raw) = params.get("timeout") else {
        return Ok(api.engine.clone());
    };
    let ms = parse_duration_ms(raw).map_err(|e| ApiError::bad_param("timeout", e))?;
    // A zero or negative timeout expires at once, as a Go context deadline in the past does.
    let timeout = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    Ok(api.engine.with_timeout(timeout))
}

/// Whether the request asks to be answered without the caches: `nocache=1` or `true`, or
/// `Cache-Control: no-cache` or `no-store` (what Grafana and Thanos' frontend send).
fn bypass_caches(headers: &HeaderMap, params: &Params) -> bool {
    let asked = params
        .get("nocache")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    asked
        || headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| {
                let d = d.trim();
                d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store")
            })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

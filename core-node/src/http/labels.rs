//! `/api/v1/labels` and `/api/v1/label/{name}/values`.
//!
//! `match[]` (repeatable) restricts the answer to the series matching any of its selectors;
//! `start` and `end` (either, or both) to the series with a sample in that range;
//! `limit` truncates the sorted answer and adds a warning. Without `match[]`, `start` and
//! `end`, names and values come from the index alone; with a range, each candidate series is
//! checked (the head, then its chunks' headers: [`query::DataSource::has_samples`]).

use super::auth::Caller;
use super::error::{ApiError, Reason};
use super::params::Params;
use super::response::Success;
use super::{Api, encode};
use axum::Extension;
use axum::extract::{Path, State};
use protocols::Tenant;
use protocols::model::is_valid_label_name;
use query::{DataSource, Matcher, SeriesRef};
use std::collections::BTreeSet;

/// Prometheus' warning when `limit` cut the answer short.
pub(crate) const TRUNCATED: &str = "results truncated due to limit";

/// What both label endpoints take: `limit`, `start`/`end` and the `match[]` selectors.
struct Lookup {
    limit: Option<usize>,
    range: Option<(i64, i64)>,
    selectors: Vec<Vec<Matcher>>,
}

fn lookup_params(params: &Params) -> Result<Lookup, ApiError> {
    let limit = params.limit()?;
    let range = params.time_range()?;
    let selectors = params
        .match_selectors()
        .map_err(|e| ApiError::bad_data(e, Reason::Parse))?;
    Ok(Lookup {
        limit,
        range,
        selectors,
    })
}

impl Lookup {
    /// Whether the index's listing answers alone (no selector, no range).
    fn whole_index(&self) -> bool {
        self.selectors.is_empty() && self.range.is_none()
    }

    /// The series of any selector (every series of the tenant when there is none), keeping
    /// only those with a sample in the range when one is given. A series matched by several
    /// selectors may come more than once.
    fn series(&self, source: &dyn DataSource, tenant: &Tenant) -> Result<Vec<SeriesRef>, ApiError> {
        let all = [Vec::new()];
        let selectors = if self.selectors.is_empty() {
            &all[..]
        } else {
            &self.selectors[..]
        };
        let mut out = Vec::new();
        for matchers in selectors {
            let found = source
                .select_series(tenant, matchers)
                .map_err(ApiError::from_source)?;
            out.extend(in_range(source, tenant, found, self.range)?);
        }
        Ok(out)
    }
}

/// The series of `series` with a sample in `range` (all of them for `None`).
pub(crate) fn in_range(
    source: &dyn DataSource,
    tenant: &Tenant,
    series: Vec<SeriesRef>,
    range: Option<(i64, i64)>,
) -> Result<Vec<SeriesRef>, ApiError> {
    let Some((start, end)) = range else {
        return Ok(series);
    };
    let mut kept = Vec::with_capacity(series.len());
    for s in series {
        if source
            .has_samples(tenant, s.id, start, end)
            .map_err(ApiError::from_source)?
        {
            kept.push(s);
        }
    }
    Ok(kept)
}

pub(crate) async fn names(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    params: Params,
) -> Result<Success, ApiError> {
    let lookup = lookup_params(&params)?;
    let limit = lookup.limit;
    let (source, tenant) = (api.state.source.clone(), caller.tenant().clone());
    let names = api
        .blocking(move || {
            if lookup.whole_index() {
                return source.label_names(&tenant).map_err(ApiError::from_source);
            }
            let mut names = BTreeSet::new();
            for s in lookup.series(source.as_ref(), &tenant)? {
                names.extend(s.labels.iter().map(|l| l.name.clone()));
            }
            Ok(names.into_iter().collect())
        })
        .await?;
    Ok(strings_up_to(names, limit))
}

pub(crate) async fn values(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Success, ApiError> {
    // Only names Updraft can store; Prometheus 3 also takes UTF-8 names, which no series here
    // can carry.
    if !is_valid_label_name(&name) {
        return Err(ApiError::bad_data(
            format!("invalid label name: {name:?}"),
            Reason::BadParam,
        ));
    }
    let lookup = lookup_params(&params)?;
    let limit = lookup.limit;
    let (source, tenant) = (api.state.source.clone(), caller.tenant().clone());
    let values = api
        .blocking(move || {
            if lookup.whole_index() {
                return source
                    .label_values(&tenant, &name)
                    .map_err(ApiError::from_source);
            }
            let series = lookup.series(source.as_ref(), &tenant)?;
            let values: BTreeSet<String> = series
                .iter()
                .filter_map(|s| s.labels.get(&name))
                .map(str::to_owned)
                .collect();
            Ok(values.into_iter().collect())
        })
        .await?;
    Ok(strings_up_to(values, limit))
}

/// `["a","b"]`, cut at `limit` with a warning. (Label names and values are short: encoding
/// even many thousands stays well under a millisecond.)
fn strings_up_to(mut items: Vec<String>, limit: Option<usize>) -> Success {
    let truncated = limit.is_some_and(|limit| items.len() > limit);
    if let Some(limit) = limit {
        items.truncate(limit);
    }
    let mut data = String::new();
    encode::string_array(&mut data, items.iter().map(String::as_str));
    let body = Success::new(data);
    if truncated {
        body.with_warning(TRUNCATED)
    } else {
        body
    }
}

//! `/api/v1/labels` and `/api/v1/label/{name}/values`.
//!
//! `match[]` (repeatable) restricts the answer to the series matching any of its selectors;
//! `limit` truncates the sorted answer and adds a warning. `start` and `end` are validated
//! but otherwise ignored in this version: the answer covers every stored series of the
//! tenant, where Prometheus covers the series with samples in the range.

use super::auth::Caller;
use super::error::{ApiError, Reason};
use super::params::Params;
use super::response::Success;
use super::{Api, encode};
use axum::Extension;
use axum::extract::{Path, State};
use protocols::model::is_valid_label_name;
use query::Matcher;
use std::collections::BTreeSet;

/// Prometheus' warning when `limit` cut the answer short.
pub(crate) const TRUNCATED: &str = "results truncated due to limit";

/// The parameters both label endpoints take: `limit`, `start`/`end` (validated, not used: see
/// the module docs) and the `match[]` selectors.
fn lookup_params(params: &Params) -> Result<(Option<usize>, Vec<Vec<Matcher>>), ApiError> {
    let limit = params.limit()?;
    params.optional_time("start")?;
    params.optional_time("end")?;
    let selectors = params
        .match_selectors()
        .map_err(|e| ApiError::bad_data(e, Reason::Parse))?;
    Ok((limit, selectors))
}

pub(crate) async fn names(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    params: Params,
) -> Result<Success, ApiError> {
    let (limit, selectors) = lookup_params(&params)?;
    let (source, tenant) = (api.state.source.clone(), caller.tenant().clone());
    let names = api
        .blocking(move || {
            if selectors.is_empty() {
                return source.label_names(&tenant).map_err(ApiError::from_source);
            }
            let mut names = BTreeSet::new();
            for matchers in &selectors {
                let series = source
                    .select_series(&tenant, matchers)
                    .map_err(ApiError::from_source)?;
                for s in series {
                    names.extend(s.labels.iter().map(|l| l.name.clone()));
                }
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
    let (limit, selectors) = lookup_params(&params)?;
    let (source, tenant) = (api.state.source.clone(), caller.tenant().clone());
    let values = api
        .blocking(move || {
            if selectors.is_empty() {
                return source
                    .label_values(&tenant, &name)
                    .map_err(ApiError::from_source);
            }
            let mut values = BTreeSet::new();
            for matchers in &selectors {
                let series = source
                    .select_series(&tenant, matchers)
                    .map_err(ApiError::from_source)?;
                values.extend(
                    series
                        .iter()
                        .filter_map(|s| s.labels.get(&name))
                        .map(str::to_owned),
                );
            }
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

//! `/api/v1/series`: the label sets of the series matching any `match[]` selector.
//!
//! At least one `match[]` is required. `start` and `end` (either, or both) keep the series
//! with a sample in that range (see [`super::labels`]). `limit` truncates the sorted answer
//! and adds a warning.

use super::auth::Caller;
use super::error::{ApiError, Reason};
use super::labels::TRUNCATED;
use super::params::Params;
use super::response::Success;
use super::{Api, encode};
use axum::Extension;
use axum::extract::State;
use std::collections::BTreeSet;

pub(crate) async fn series(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    params: Params,
) -> Result<Success, ApiError> {
    if params.all("match[]").is_empty() {
        return Err(ApiError::bad_data(
            "no match[] parameter provided",
            Reason::BadParam,
        ));
    }
    // Checks in Prometheus' order, so the same bad request gets the same error.
    let limit = params.limit()?;
    let range = params.time_range()?;
    let selectors = params
        .match_selectors()
        .map_err(|e| ApiError::bad_param("match[]", e).with_reason(Reason::Parse))?;
    let (source, tenant) = (api.state.source.clone(), caller.tenant().clone());
    let (data, truncated) = api
        .blocking(move || {
            // A set of labels: sorted as Prometheus sorts, and a series matched by several
            // selectors appears once.
            let mut all = BTreeSet::new();
            for matchers in &selectors {
                let found = source
                    .select_series(&tenant, matchers)
                    .map_err(ApiError::from_source)?;
                let found = super::labels::in_range(source.as_ref(), &tenant, found, range)?;
                all.extend(found.into_iter().map(|s| s.labels));
            }
            let shown = limit.unwrap_or(usize::MAX);
            let mut data = String::from("[");
            for (i, labels) in all.iter().take(shown).enumerate() {
                if i > 0 {
                    data.push(',');
                }
                encode::labels(&mut data, labels.iter());
            }
            data.push(']');
            Ok((data, all.len() > shown))
        })
        .await?;
    let body = Success::new(data);
    Ok(if truncated {
        body.with_warning(TRUNCATED)
    } else {
        body
    })
}

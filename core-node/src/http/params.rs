//! Request parameters, read and parsed as Prometheus reads them.
//!
//! Parameters come from the URL query string and, for a form-encoded POST, from the body;
//! body values come first, as in Go's `Request.Form`, so the body wins for single-valued
//! parameters. Repeated parameters (`match[]`) keep every value, which axum's `Query` and
//! `Form` extractors would collapse.
//!
//! Times are Unix seconds (a float, rounded to the millisecond) or RFC 3339. Durations are
//! float seconds or a Prometheus duration such as `1m30s`; they are truncated to whole
//! milliseconds, Updraft's resolution.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, header};
use query::{Matcher, QueryError};

/// All parameters of one request, body values first.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, `None` when absent or empty (Prometheus does not tell an
    /// empty parameter from a missing one).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every value of `name`, in order.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// An optional time parameter of the label and series endpoints: Prometheus prefixes the
    /// error with the parameter name.
    pub(crate) fn optional_time(&self, name: &'static str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                parse_time(v).map_err(|e| {
                    ApiError::bad_param(name, format!("Invalid time value for '{name}': {e}"))
                })
            })
            .transpose()
    }

    /// `start` and `end` of the series and label endpoints as an inclusive range, when either
    /// is given (the other then open); `None` when neither is: every stored series counts.
    pub(crate) fn time_range(&self) -> Result<Option<(i64, i64)>, ApiError> {
        let start = self.optional_time("start")?;
        let end = self.optional_time("end")?;
        Ok((start.is_some() || end.is_some())
            .then(|| (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX))))
    }

    /// A required time parameter (`start` and `end` of range queries).
    pub(crate) fn required_time(&self, name: &'static str) -> Result<i64, ApiError> {
        parse_time(self.get(name).unwrap_or("")).map_err(|e| ApiError::bad_param(name, e))
    }

    /// `limit`: absent or 0 means no limit.
    pub(crate) fn limit(&self) -> Result<Option<usize>, ApiError> {
        let Some(raw) = self.get("limit") else {
            return Ok(None);
        };
        match raw.parse::<i64>() {
            Ok(0) => Ok(None),
            Ok(n) if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            Ok(_) => Err(ApiError::bad_param("limit", "limit must be non-negative")),
            Err(_) => Err(ApiError::bad_param(
                "limit",
                format!("cannot parse {raw:?} to a valid limit"),
            )),
        }
    }

    /// The selectors of every `match[]`, as sets of matchers; an error message, worded as
    /// Prometheus words it, for the first that is not a valid series selector.
    pub(crate) fn match_selectors(&self) -> Result<Vec<Vec<Matcher>>, String> {
        self.all("match[]")
            .into_iter()
            .map(|raw| {
                query::parse_series_selector(raw).map_err(|e| match e {
                    QueryError::EmptySelector => {
                        "match[] must contain at least one non-empty matcher".to_owned()
                    }
                    other => other.to_string(),
                })
            })
            .collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let query = req.uri().query().unwrap_or_default().to_owned();
        let mut pairs = Vec::new();
        if req.method() == Method::POST && is_form(&req) {
            // Bounded by the router's `DefaultBodyLimit`; past it the rejection is a 413.
            let body = Bytes::from_request(req, state)
                .await
                .map_err(ApiError::from_body_rejection)?;
            pairs.extend(form_urlencoded::parse(&body).into_owned());
        }
        pairs.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        Ok(Self(pairs))
    }
}

fn is_form(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// What Prometheus' clients send for "no lower bound" and "no upper bound": Go's
/// `time.Format` of Prometheus' `MinTime` and `MaxTime`, years beyond RFC 3339's four digits.
const MIN_TIME_FORMATTED: &str = "-292273086-05-16T16:47:06Z";
const MAX_TIME_FORMATTED: &str = "292277025-08-18T07:12:54.999999999Z";
const MIN_TIME_MS: i64 = -9_223_309_901_257_974_000;
const MAX_TIME_MS: i64 = 9_223_309_901_257_974_999;

/// Unix seconds (fraction rounded to the millisecond) or RFC 3339, to Unix milliseconds.
pub(crate) fn parse_time(raw: &str) -> Result<i64, String> {
    let invalid = || format!("cannot parse {raw:?} to a valid timestamp");
    if let Ok(secs) = raw.parse::<f64>() {
        if !secs.is_finite() {
            return Err(invalid());
        }
        let whole = secs.trunc();
        // Exactly Prometheus' arithmetic: whole seconds, plus the fraction rounded to ms.
        let frac_ms = ((secs - whole) * 1000.0).round() as i64;
        if whole.abs() > (i64::MAX / 1000) as f64 {
            return Err(invalid());
        }
        return (whole as i64)
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(frac_ms))
            .ok_or_else(invalid);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_millis());
    }
    match raw {
        MIN_TIME_FORMATTED => Ok(MIN_TIME_MS),
        MAX_TIME_FORMATTED => Ok(MAX_TIME_MS),
        _ => Err(invalid()),
    }
}

/// Float seconds or a Prometheus duration (`1h30m`, `15s`, `500ms`) to milliseconds,
/// truncating below the millisecond. Negative float seconds are returned as such; callers
/// decide what a non-positive duration means.
pub(crate) fn parse_duration_ms(raw: &str) -> Result<i64, String> {
    if let Ok(secs) = raw.parse::<f64>() {
        if secs.is_nan() {
            return Err(format!("cannot parse {raw:?} to a valid duration"));
        }
        // Through nanoseconds, as Prometheus does (`time.Duration`), then truncated.
        let nanos = secs * 1e9;
        if nanos >= i64::MAX as f64 || nanos <= i64::MIN as f64 {
            return Err(format!(
                "cannot parse {raw:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok((nanos as i64) / 1_000_000);
    }
    parse_prometheus_duration(raw)
        .ok_or_else(|| format!("cannot parse {raw:?} to a valid duration"))
}

/// `[0-9]+y`, `w`, `d`, `h`, `m`, `s`, `ms` parts, each at most once, in that order; or `0`.
fn parse_prometheus_duration(raw: &str) -> Option<i64> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if raw == "0" {
        return Some(0);
    }
    if raw.is_empty() {
        return None;
    }
    let mut rest = raw;
    let mut next_unit = 0;
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // "ms" before "m": the longest unit name that matches.
        let (index, (unit, unit_ms)) = UNITS
            .iter()
            .enumerate()
            .skip(next_unit)
            .filter(|(_, (unit, _))| rest.starts_with(unit))
            .max_by_key(|(_, (unit, _))| unit.len())?;
        rest = &rest[unit.len()..];
        next_unit = index + 1;
        total = total.checked_add(n.checked_mul(*unit_ms)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_unix_seconds_and_rfc3339() {
        assert_eq!(parse_time("1435781451.781"), Ok(1_435_781_451_781));
        assert_eq!(parse_time("1435781451"), Ok(1_435_781_451_000));
        // Sub-millisecond digits round, as in Prometheus.
        assert_eq!(parse_time("1.0006"), Ok(1_001));
        assert_eq!(parse_time("1.0004"), Ok(1_000));
        assert_eq!(parse_time("-1.5"), Ok(-1_500));
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z"),
            Ok(1_435_781_451_781)
        );
        assert_eq!(
            parse_time("2015-07-01T22:10:51+02:00"),
            Ok(1_435_781_451_000)
        );
        assert_eq!(parse_time(MIN_TIME_FORMATTED), Ok(MIN_TIME_MS));
        assert_eq!(parse_time(MAX_TIME_FORMATTED), Ok(MAX_TIME_MS));
        for bad in ["", "abc", "NaN", "inf", "1e300", "2015-07-01"] {
            assert_eq!(
                parse_time(bad),
                Err(format!("cannot parse {bad:?} to a valid timestamp")),
                "{bad}"
            );
        }
    }

    #[test]
    fn durations_in_float_seconds_and_prometheus_units() {
        assert_eq!(parse_duration_ms("15"), Ok(15_000));
        assert_eq!(parse_duration_ms("0.5"), Ok(500));
        assert_eq!(parse_duration_ms("0.0005"), Ok(0));
        assert_eq!(parse_duration_ms("-1"), Ok(-1_000));
        assert_eq!(parse_duration_ms("15s"), Ok(15_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("1d2h3m4s5ms"), Ok(93_784_005));
        assert_eq!(parse_duration_ms("2w"), Ok(1_209_600_000));
        assert_eq!(parse_duration_ms("1y"), Ok(31_536_000_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        for bad in ["", "1.5h", "30s1m", "1m1m", "h", "1x", "-1m", "NaN", "1h "] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        assert!(
            parse_duration_ms("1e300")
                .expect_err("overflow")
                .ends_with("It overflows int64")
        );
        assert!(parse_duration_ms("999999999999y").is_err());
    }

    #[test]
    fn params_take_the_first_non_empty_value() {
        let p = Params::from_pairs(&[("a", "1"), ("a", "2"), ("e", ""), ("m", "x"), ("m", "y")]);
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("e"), None);
        assert_eq!(p.get("z"), None);
        assert_eq!(p.all("m"), ["x", "y"]);
    }

    #[test]
    fn limit_zero_means_none_and_negative_is_refused() {
        let limit = |v: &str| Params::from_pairs(&[("limit", v)]).limit();
        assert_eq!(limit("5").ok(), Some(Some(5)));
        assert_eq!(limit("0").ok(), Some(None));
        assert_eq!(limit("").ok(), Some(None));
        assert!(limit("-1").is_err());
        assert!(limit("x").is_err());
    }
}

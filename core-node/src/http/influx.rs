//! `POST /write` (InfluxDB 1.x) and `POST /api/v2/write` (InfluxDB 2.x): line protocol
//! (parser in `protocols::line_protocol`).
//!
//! # Mapping
//!
//! Every numeric or boolean field of a line is one sample of the series named
//! `<measurement>_<field>` (sanitized to a valid metric name: other characters become `_`),
//! labelled with the line's tags (keys sanitized likewise, `[a-zA-Z0-9_]`). Booleans are 1
//! and 0; integers and unsigned integers become floats (exact up to 2^53). String fields are
//! skipped and counted (`updraft_core_ingest_fields_skipped_total`). A line without a
//! timestamp takes the request's arrival time. Timestamps are read in the `precision` given
//! (`/write`: `ns` (default), `u`, `ms`, `s`, `m`, `h`; `/api/v2/write`: `ns` (default),
//! `us`, `ms`, `s`) and stored in milliseconds, rounded down.
//!
//! `db`, `rp`, `bucket` and `org` are accepted and ignored: every write goes to the tenant of
//! the request's token (`Authorization: Token <token>`, `Bearer` or basic auth; InfluxDB
//! 1.x's `u`/`p` query parameters are not read, to keep tokens out of URLs and logs). Bodies may be gzip-compressed (`Content-Encoding: gzip`, Telegraf's
//! default), up to `MAX_DECODED_BYTES` inflated.
//!
//! # Partial writes
//!
//! As InfluxDB: a line that does not parse, or whose tags make an invalid label set, is
//! refused alone; every good line of the request is stored, and the answer is 400 naming the
//! first bad lines by number. 204 when every line was stored.

use super::Api;
use super::auth::Caller;
use super::ingest::{
    self, Collected, FIELDS_SKIPPED, IngestError, MAX_DECODED_BYTES, Protocol, Reason,
};
use axum::Extension;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use protocols::line_protocol::{self, Precision};
use protocols::model::sanitize_metric_name;
use protocols::{Labels, Sample, Tenant};
use std::collections::HashMap;

/// Bad lines named in an answer; the rest are only counted.
const ERRORS_SHOWN: usize = 5;

pub(crate) async fn write_v1(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant = caller.tenant().clone();
    respond(run(api, tenant, Protocol::InfluxV1, query, headers, body).await)
}

pub(crate) async fn write_v2(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant = caller.tenant().clone();
    respond(run(api, tenant, Protocol::InfluxV2, query, headers, body).await)
}

fn respond(r: Result<(), IngestError>) -> Response {
    match r {
        Ok(()) => ingest::no_content(),
        Err(e) => e.into_response(),
    }
}

async fn run(
    api: Api,
    tenant: Tenant,
    protocol: Protocol,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(), IngestError> {
    let precision = precision(protocol, query.as_deref().unwrap_or_default())?;
    let gzip = match ingest::content_encoding(&headers) {
        None => false,
        Some(e) if e == "gzip" => true,
        Some(e) => {
            return Err(IngestError::new(
                protocol,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Reason::UnsupportedMediaType,
                format!("unsupported Content-Encoding {e:?}: use gzip or none"),
            ));
        }
    };
    api.admit(protocol, &tenant)?;
    let (storage, _permit) = api.write_slot(protocol).await?;
    let body = ingest::read_body(protocol, &headers, body).await?;
    let now_ms = now_ms();
    let t = tenant.clone();
    let converted = ingest::blocking(protocol, move || {
        let body = if gzip { gunzip(protocol, &body)? } else { body };
        convert(protocol, &body, precision, now_ms, &t)
    })
    .await?;
    api.charge(&tenant, &converted.batches);
    for (reason, n) in &converted.rejected {
        ingest::count_rejected(protocol, *reason, *n);
    }
    if converted.skipped_strings > 0 {
        metrics::counter!(FIELDS_SKIPPED, "protocol" => protocol.as_str(), "reason" => "string")
            .increment(converted.skipped_strings);
    }
    let stored = if converted.batches.is_empty() {
        ingest::Stored::default()
    } else {
        ingest::submit(protocol, &storage, converted.batches).await?
    };
    if converted.errors.is_empty() && stored.refused_series == 0 {
        return Ok(());
    }
    let mut message = format!(
        "partial write: {} of {} lines refused",
        converted.bad_lines, converted.lines
    );
    for e in &converted.errors {
        message.push_str("; ");
        message.push_str(e);
    }
    if converted.bad_lines > converted.errors.len() {
        message.push_str(&format!(
            "; and {} more",
            converted.bad_lines - converted.errors.len()
        ));
    }
    if stored.refused_series > 0 {
        message.push_str(&format!(
            "; {} series refused by storage, first: {}",
            stored.refused_series,
            stored.refusal.unwrap_or_default()
        ));
    }
    message.push_str(&format!(
        "; {} samples of the other lines were stored",
        stored.samples
    ));
    Err(IngestError::partial(protocol, message))
}

/// Decompresses a gzip body (every member, as Go's reader does), refusing one that inflates
/// past [`MAX_DECODED_BYTES`] as soon as it does.
fn gunzip(protocol: Protocol, body: &[u8]) -> Result<Vec<u8>, IngestError> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(MAX_DECODED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            IngestError::bad(protocol, Reason::BadGzip, format!("corrupt gzip body: {e}"))
        })?;
    if out.len() > MAX_DECODED_BYTES {
        return Err(IngestError::new(
            protocol,
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            format!("body decompresses to more than {MAX_DECODED_BYTES} bytes"),
        ));
    }
    Ok(out)
}

fn precision(protocol: Protocol, query: &str) -> Result<Precision, IngestError> {
    let given = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "precision")
        .last()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let parsed = match protocol {
        Protocol::InfluxV2 => Precision::from_v2(&given),
        _ => Precision::from_v1(&given),
    };
    parsed.ok_or_else(|| {
        let allowed = match protocol {
            Protocol::InfluxV2 => "ns, us, ms, s",
            _ => "ns, u, ms, s, m, h",
        };
        IngestError::bad(
            protocol,
            Reason::BadParam,
            format!("invalid precision {given:?}: use one of {allowed}"),
        )
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

struct Converted {
    batches: Vec<crate::storage::SampleBatch>,
    /// Lines that are not blank or comments.
    lines: usize,
    bad_lines: usize,
    /// The first [`ERRORS_SHOWN`] bad lines, described.
    errors: Vec<String>,
    /// Bad lines per reason.
    rejected: HashMap<Reason, u64>,
    skipped_strings: u64,
}

fn convert(
    protocol: Protocol,
    body: &[u8],
    precision: Precision,
    now_ms: i64,
    tenant: &Tenant,
) -> Result<Converted, IngestError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        IngestError::bad(
            protocol,
            Reason::BadUtf8,
            format!(
                "body is not UTF-8 (at byte {}); nothing was stored",
                e.valid_up_to()
            ),
        )
    })?;
    let mut collected = Collected::default();
    let mut out = Converted {
        batches: Vec::new(),
        lines: 0,
        bad_lines: 0,
        errors: Vec::new(),
        rejected: HashMap::new(),
        skipped_strings: 0,
    };
    for (number, parsed) in line_protocol::parse(text).numbered() {
        out.lines += 1;
        let mapped = parsed
            .map_err(|e| (Reason::BadLine, e.to_string()))
            .and_then(|line| {
                map_line(&line, precision, now_ms)
                    .map_err(|(reason, message)| (reason, format!("line {number}: {message}")))
            });
        match mapped {
            Ok((samples, strings)) => {
                out.skipped_strings += strings;
                for (labels, sample) in samples {
                    collected.push(labels, sample);
                }
            }
            Err((reason, message)) => {
                out.bad_lines += 1;
                *out.rejected.entry(reason).or_default() += 1;
                if out.errors.len() < ERRORS_SHOWN {
                    out.errors.push(message);
                }
            }
        }
    }
    if !collected.is_empty() {
        out.batches = collected.into_batches(tenant);
    }
    Ok(out)
}

/// A line's samples (one per numeric or boolean field) and how many string fields it skipped;
/// or why the whole line is refused.
#[allow(clippy::type_complexity)]
fn map_line(
    line: &line_protocol::Line<'_>,
    precision: Precision,
    now_ms: i64,
) -> Result<(Vec<(Labels, Sample)>, u64), (Reason, String)> {
    let timestamp_ms = match line.timestamp {
        None => now_ms,
        Some(ts) => precision.to_millis(ts).ok_or_else(|| {
            (
                Reason::BadTimestamp,
                format!(
                    "line {:?}: timestamp {ts} is out of range",
                    excerpt(&line.measurement)
                ),
            )
        })?,
    };
    let tags: Vec<(String, &str)> = line
        .tags
        .iter()
        .map(|(k, v)| (sanitize_label_name(k), v.as_ref()))
        .collect();
    let mut samples = Vec::with_capacity(line.fields.len());
    let mut strings = 0;
    for (field, value) in &line.fields {
        let Some(v) = value.as_f64() else {
            strings += 1;
            continue;
        };
        let raw_name = format!("{}_{}", line.measurement, field);
        let name = sanitize_metric_name(&raw_name).unwrap_or_default();
        let labels = Labels::from_metric(&name, tags.iter().map(|(k, v)| (k.clone(), *v)))
            .map_err(|e| {
                (
                    Reason::InvalidLabels,
                    format!("measurement {:?}: {e}", excerpt(&line.measurement)),
                )
            })?;
        samples.push((labels, Sample::new(timestamp_ms, v)));
    }
    Ok((samples, strings))
}

fn excerpt(s: &str) -> &str {
    let cut = (0..=s.len().min(64))
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    &s[..cut]
}

/// A tag key as a label name: every character outside `[a-zA-Z0-9_]` becomes `_`, and a
/// leading digit gets a `_` prefix. Keys starting with `__` are kept as they are (the model
/// refuses `__name__` twice and the reserved `__type__`/`__unit__`).
fn sanitize_label_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 1);
    if raw.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(raw.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_keys_become_label_names() {
        assert_eq!(sanitize_label_name("host-name.x"), "host_name_x");
        assert_eq!(sanitize_label_name("1a"), "_1a");
        assert_eq!(sanitize_label_name("ünï"), "_n_");
    }

    #[test]
    fn a_line_maps_to_one_series_per_numeric_field() {
        let line = line_protocol::parse_line(
            r#"cpu\ load,host=a,region-x=eu usage=0.5,cores=8i,up=t,name="x" 1700000000"#,
        )
        .expect("parses")
        .expect("a line");
        let (samples, strings) = map_line(&line, Precision::Seconds, 0).expect("maps");
        assert_eq!(strings, 1);
        let got: Vec<_> = samples
            .iter()
            .map(|(l, s)| (l.to_string(), s.timestamp_ms, s.value))
            .collect();
        assert_eq!(
            got,
            [
                (
                    r#"cpu_load_usage{host="a",region_x="eu"}"#.to_owned(),
                    1_700_000_000_000,
                    0.5
                ),
                (
                    r#"cpu_load_cores{host="a",region_x="eu"}"#.to_owned(),
                    1_700_000_000_000,
                    8.0
                ),
                (
                    r#"cpu_load_up{host="a",region_x="eu"}"#.to_owned(),
                    1_700_000_000_000,
                    1.0
                ),
            ]
        );
        // No timestamp: the arrival time.
        let line = line_protocol::parse_line("m v=1")
            .expect("parses")
            .expect("a line");
        let (samples, _) = map_line(&line, Precision::Nanoseconds, 42).expect("maps");
        assert_eq!(samples[0].1.timestamp_ms, 42);
    }

    #[test]
    fn bad_tags_and_timestamps_refuse_the_line() {
        for (text, reason) in [
            ("m,__type__=1 v=1", Reason::InvalidLabels),
            ("m,a-b=1,a_b=2 v=1", Reason::InvalidLabels),
            ("m v=1 9223372036854775807", Reason::BadTimestamp),
        ] {
            let line = line_protocol::parse_line(text)
                .expect("parses")
                .expect("a line");
            let e = map_line(&line, Precision::Hours, 0).expect_err("refused");
            assert_eq!(e.0, reason, "{text}: {}", e.1);
        }
    }
}

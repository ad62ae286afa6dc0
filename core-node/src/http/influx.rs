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
use std::borrow::Cow;
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
    let mut out = Converted {
        batches: Vec::new(),
        lines: 0,
        bad_lines: 0,
        errors: Vec::new(),
        rejected: HashMap::new(),
        skipped_strings: 0,
    };
    let mut series = Series::default();
    let mut lines = line_protocol::parse(text);
    let mut line = line_protocol::Line::default();
    let mut values = Vec::new();
    while let Some((number, parsed)) = lines.next_into(&mut line) {
        out.lines += 1;
        let mapped = parsed
            .map_err(|e| (Reason::BadLine, e.to_string()))
            .and_then(|key| {
                series
                    .map_line(key, &line, precision, now_ms, &mut values)
                    .map_err(|(reason, message)| (reason, format!("line {number}: {message}")))
            });
        match mapped {
            Ok((timestamp_ms, strings)) => {
                out.skipped_strings += strings;
                for &(slot, v) in &values {
                    series.samples[slot].push(Sample::new(timestamp_ms, v));
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
    let collected = series.into_collected();
    if !collected.is_empty() {
        out.batches = collected.into_batches(tenant);
    }
    Ok(out)
}

/// Why a line is refused: the reason counted, and the message for the answer.
type Refusal = (Reason, String);

/// A field key seen with a series key, and its slot or why its label set is refused.
type FieldSlot<'a> = (Cow<'a, str>, Result<usize, Refusal>);

/// The series of one request. A line's series key (its measurement and tags as written) with
/// a field key always makes the same label set, so a tag set seen before costs one hash of its
/// text instead of a label set built, checked and hashed again; most bodies repeat each tag
/// set once per timestamp.
#[derive(Default)]
struct Series<'a> {
    /// Series key → each field key seen with it (a measurement has a few: searched in order)
    /// and its slot, or why its label set is refused (refused again without rebuilding it).
    by_key: foldhash::HashMap<&'a str, Vec<FieldSlot<'a>>>,
    /// Label set → slot: series keys that differ in tag order, or in characters the label
    /// names sanitize away, are the same series.
    by_labels: foldhash::HashMap<Labels, usize>,
    /// Samples by slot.
    samples: Vec<Vec<Sample>>,
}

impl<'a> Series<'a> {
    /// The line's timestamp in milliseconds and how many string fields it skipped, with the
    /// slot and value of each numeric or boolean field in `values`; or why the whole line is
    /// refused (its timestamp, or the first field whose label set is invalid).
    fn map_line(
        &mut self,
        key: &'a str,
        line: &line_protocol::Line<'a>,
        precision: Precision,
        now_ms: i64,
        values: &mut Vec<(usize, f64)>,
    ) -> Result<(i64, u64), Refusal> {
        values.clear();
        let timestamp_ms = timestamp_ms(line, precision, now_ms)?;
        let fields = self.by_key.entry(key).or_default();
        let mut strings = 0;
        for (field, value) in &line.fields {
            let Some(v) = value.as_f64() else {
                strings += 1;
                continue;
            };
            let slot = match fields.iter().find(|(f, _)| f == field) {
                Some((_, slot)) => slot.clone()?,
                None => {
                    let slot = labels_for(line, field).map(|labels| {
                        let next = self.samples.len();
                        let slot = *self.by_labels.entry(labels).or_insert(next);
                        if slot == next {
                            self.samples.push(Vec::new());
                        }
                        slot
                    });
                    fields.push((field.clone(), slot.clone()));
                    slot?
                }
            };
            values.push((slot, v));
        }
        Ok((timestamp_ms, strings))
    }

    fn into_collected(mut self) -> Collected {
        let mut collected = Collected::with_capacity(self.by_labels.len());
        for (labels, slot) in self.by_labels {
            collected.append(labels, std::mem::take(&mut self.samples[slot]));
        }
        collected
    }
}

/// The line's timestamp in Unix milliseconds (the arrival time if it has none).
fn timestamp_ms(
    line: &line_protocol::Line<'_>,
    precision: Precision,
    now_ms: i64,
) -> Result<i64, Refusal> {
    match line.timestamp {
        None => Ok(now_ms),
        Some(ts) => precision.to_millis(ts).ok_or_else(|| {
            (
                Reason::BadTimestamp,
                format!(
                    "line {:?}: timestamp {ts} is out of range",
                    excerpt(&line.measurement)
                ),
            )
        }),
    }
}

/// The label set of `field` of `line`: `<measurement>_<field>` and the line's tags.
fn labels_for(line: &line_protocol::Line<'_>, field: &str) -> Result<Labels, Refusal> {
    let raw_name = format!("{}_{}", line.measurement, field);
    let name = sanitize_metric_name(&raw_name).unwrap_or_default();
    let tags = line
        .tags
        .iter()
        .map(|(k, v)| (sanitize_label_name(k), v.as_ref()));
    Labels::from_metric(&name, tags).map_err(|e| {
        (
            Reason::InvalidLabels,
            format!("measurement {:?}: {e}", excerpt(&line.measurement)),
        )
    })
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
    use std::collections::BTreeMap;

    #[test]
    fn tag_keys_become_label_names() {
        assert_eq!(sanitize_label_name("host-name.x"), "host_name_x");
        assert_eq!(sanitize_label_name("1a"), "_1a");
        assert_eq!(sanitize_label_name("ünï"), "_n_");
    }

    /// Every series `convert` made from `body` (seconds precision, arrival time 42 ms), as
    /// `labels → [(ms, value)]`, with the converted request.
    fn series(body: &str) -> (BTreeMap<String, Vec<(i64, f64)>>, Converted) {
        let c = convert(
            Protocol::InfluxV1,
            body.as_bytes(),
            Precision::Seconds,
            42,
            &Tenant::default(),
        )
        .expect("utf-8");
        let mut out = BTreeMap::new();
        for b in &c.batches {
            for (labels, samples) in &b.series {
                let points: &mut Vec<(i64, f64)> = out.entry(labels.to_string()).or_default();
                points.extend(samples.iter().map(|s| (s.timestamp_ms, s.value)));
            }
        }
        (out, c)
    }

    #[test]
    fn a_line_maps_to_one_series_per_numeric_field() {
        let (got, c) =
            series(r#"cpu\ load,host=a,region-x=eu usage=0.5,cores=8i,up=t,name="x" 1700000000"#);
        assert_eq!(c.skipped_strings, 1);
        assert_eq!((c.lines, c.bad_lines), (1, 0));
        let at = 1_700_000_000_000;
        let want: BTreeMap<String, Vec<(i64, f64)>> = [
            (r#"cpu_load_usage{host="a",region_x="eu"}"#, 0.5),
            (r#"cpu_load_cores{host="a",region_x="eu"}"#, 8.0),
            (r#"cpu_load_up{host="a",region_x="eu"}"#, 1.0),
        ]
        .into_iter()
        .map(|(l, v)| (l.to_owned(), vec![(at, v)]))
        .collect();
        assert_eq!(got, want);
        // No timestamp: the arrival time.
        let (got, _) = series("m v=1");
        assert_eq!(got["m_v{}"], [(42, 1.0)]);
    }

    #[test]
    fn repeated_tag_sets_share_one_series() {
        // The same tag set on every line, once in another tag order, once with a key that
        // sanitizes to the same label name, and an escaped measurement and tag.
        let body = "m,a=1,b=2 v=1,w=10 1\n\
                    m,a=1,b=2 v=2,w=20 2\n\
                    m,b=2,a=1 v=3 3\n\
                    m,a=1,b=2 w=40,v=4 4\n\
                    m,a=1,b-=2 v=5 5\n\
                    m,a=1,b.=2 v=6 6\n\
                    w\\ m,k\\=1=v\\,2 f=7 7\n\
                    w\\ m,k\\=1=v\\,2 f=8,f=9 8\n";
        let (got, c) = series(body);
        assert_eq!((c.lines, c.bad_lines), (8, 0));
        let want: BTreeMap<String, Vec<(i64, f64)>> = [
            (
                r#"m_v{a="1",b="2"}"#,
                vec![(1000, 1.0), (2000, 2.0), (3000, 3.0), (4000, 4.0)],
            ),
            (
                r#"m_w{a="1",b="2"}"#,
                vec![(1000, 10.0), (2000, 20.0), (4000, 40.0)],
            ),
            (r#"m_v{a="1",b_="2"}"#, vec![(5000, 5.0), (6000, 6.0)]),
            // A repeated field in one line: the last of the timestamp wins, as before.
            (r#"w_m_f{k_1="v,2"}"#, vec![(7000, 7.0), (8000, 9.0)]),
        ]
        .into_iter()
        .map(|(l, p)| (l.to_owned(), p))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn bad_tags_and_timestamps_refuse_the_line() {
        for (text, reason, message) in [
            (
                "m,__type__=1 v=1",
                Reason::InvalidLabels,
                "line 1: measurement \"m\": label name \"__type__\" is reserved",
            ),
            (
                "m,a-b=1,a_b=2 v=1",
                Reason::InvalidLabels,
                "line 1: measurement \"m\": duplicate label name \"a_b\"",
            ),
            (
                "m v=1 9223372036854775807",
                Reason::BadTimestamp,
                "line 1: line \"m\": timestamp 9223372036854775807 is out of range",
            ),
        ] {
            let c = convert(
                Protocol::InfluxV1,
                text.as_bytes(),
                Precision::Hours,
                0,
                &Tenant::default(),
            )
            .expect("utf-8");
            assert_eq!(c.bad_lines, 1, "{text}");
            assert_eq!(c.rejected.get(&reason), Some(&1), "{text}");
            assert!(c.errors[0].starts_with(message), "{text}: {}", c.errors[0]);
            assert!(c.batches.is_empty(), "{text}");
        }
    }

    #[test]
    fn a_refused_tag_set_is_refused_on_every_line_and_costs_no_neighbour() {
        // `m,a-b=1,a_b=2` is refused each time it comes back (from the cache), with the same
        // message; a line refused for its second field (a metric name over the label value
        // limit) stores nothing of its first, though the same tag set's first field is
        // stored from other lines; lines that do not parse are refused with the parser's
        // error, as before.
        let long = "x".repeat(protocols::model::MAX_VALUE_BYTES);
        let body = format!(
            "m,a-b=1,a_b=2 v=1 1\n\
             ok,t=x v=1 1\n\
             m,a-b=1,a_b=2 v=2 2\n\
             bad v=\n\
             m,__x=1 v=3,w=4 3\n\
             ok,t=x v=2 2\n\
             m,a-b=1,a_b=2 s=\"only a string\" 4\n\
             ok,t=x v=3,{long}=1 3\n\
             ok,t=x v=4 4\n\
             ok,t=x v=5,{long}=1 5\n"
        );
        let (got, c) = series(&body);
        assert_eq!((c.lines, c.bad_lines), (10, 5));
        assert_eq!(c.rejected.get(&Reason::InvalidLabels), Some(&4));
        assert_eq!(c.rejected.get(&Reason::BadLine), Some(&1));
        assert_eq!(c.rejected.get(&Reason::BadTimestamp), None);
        let expected_parse_error = line_protocol::parse("bad v=")
            .next()
            .and_then(Result::err)
            .map(|e| e.to_string().replacen("line 1", "line 4", 1))
            .expect("a parse error");
        assert_eq!(c.errors[2], expected_parse_error);
        assert_eq!(
            c.errors[0].replacen("line 1", "", 1),
            c.errors[1].replacen("line 3", "", 1)
        );
        // The string-only line of the refused tag set is stored (nothing to refuse) and
        // counted as a skipped string; `__x` is a valid label name, so line 5 is stored.
        assert_eq!(c.skipped_strings, 1);
        let keys: Vec<&str> = got.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [r#"m_v{__x="1"}"#, r#"m_w{__x="1"}"#, r#"ok_v{t="x"}"#]
        );
        assert_eq!(
            got[r#"ok_v{t="x"}"#],
            [(1000, 1.0), (2000, 2.0), (4000, 4.0)]
        );
        assert!(
            c.errors[3].starts_with("line 8: measurement \"ok\": label "),
            "{}",
            c.errors[3]
        );
    }
}

//! `POST /api/v1/write`: Prometheus remote_write 1.0 (protobuf `WriteRequest`, snappy block
//! compression; messages in `protocols::remote_write`).
//!
//! Status codes as the remote_write spec asks: 204 once every sample is durable; 400 for a
//! request that can never succeed (corrupt snappy, bad protobuf, a series with invalid labels
//! or no `__name__`), which the sender drops; 413 for a body over the limits; 415 for remote
//! write 2.0 or another `Content-Encoding`; 503 with `Retry-After` when storage is busy or
//! stopping, which the sender retries.
//!
//! Partial writes: a series with invalid labels, or one storage refuses (limits, retention),
//! is refused alone; the rest of the request is stored and the answer is 400 naming the
//! first refusal (Prometheus' own receiver does the same for out-of-order samples).

use super::Api;
use super::auth::Caller;
use super::ingest::{
    self, Collected, IngestError, MAX_DECODED_BYTES, Protocol, Reason, count_rejected,
};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocols::remote_write::{RemoteWriteError, WriteRequest, decode_request};
use protocols::{Label, Labels, Sample, Tenant};

const P: Protocol = Protocol::RemoteWrite;

pub(crate) async fn write(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match run(api, caller.tenant().clone(), headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(
    api: Api,
    tenant: Tenant,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IngestError> {
    check_headers(&headers)?;
    api.admit(P, &tenant)?;
    let (storage, _permit) = api.write_slot(P).await?;
    let body = ingest::read_body(P, &headers, body).await?;
    let t = tenant.clone();
    let converted = ingest::blocking(P, move || convert(&body, &t)).await?;
    api.charge(&tenant, &converted.batches);
    count_rejected(P, Reason::InvalidLabels, converted.invalid_series);
    let stored = ingest::submit(P, &storage, converted.batches).await?;
    let refused = converted.invalid_series + stored.refused_series;
    if refused == 0 {
        return Ok(ingest::no_content());
    }
    let first = converted.invalid.or(stored.refusal).unwrap_or_default();
    Err(IngestError::partial(
        P,
        format!(
            "{refused} series refused, first: {first}; the other {} samples were stored",
            stored.samples
        ),
    ))
}

/// Refuses remote write 2.0 and encodings other than snappy (an absent header is taken as
/// snappy, as some senders omit it).
fn check_headers(headers: &HeaderMap) -> Result<(), IngestError> {
    let unsupported = |message: String| {
        IngestError::new(
            P,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reason::UnsupportedMediaType,
            message,
        )
    };
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        && ct.contains("io.prometheus.write.v2")
    {
        return Err(unsupported(format!(
            "remote write 2.0 ({ct}) is not supported; send remote write 1.0 (prometheus.WriteRequest)"
        )));
    }
    match ingest::content_encoding(headers) {
        None => Ok(()),
        Some(e) if e == "snappy" => Ok(()),
        Some(e) => Err(unsupported(format!(
            "unsupported Content-Encoding {e:?}: remote write bodies are snappy-compressed"
        ))),
    }
}

struct Converted {
    batches: Vec<crate::storage::SampleBatch>,
    /// Series refused for their labels, and the first reason.
    invalid_series: u64,
    invalid: Option<String>,
}

fn convert(body: &[u8], tenant: &Tenant) -> Result<Converted, IngestError> {
    let request = decode_request(body, MAX_DECODED_BYTES).map_err(|e| match e {
        RemoteWriteError::TooLarge { .. } => IngestError::new(
            P,
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            e.to_string(),
        ),
        RemoteWriteError::Snappy(_) => IngestError::bad(P, Reason::BadSnappy, e.to_string()),
        RemoteWriteError::Protobuf(_) => IngestError::bad(P, Reason::BadProtobuf, e.to_string()),
    })?;
    let (collected, invalid_series, invalid) = collect(request);
    Ok(Converted {
        batches: collected.into_batches(tenant),
        invalid_series,
        invalid,
    })
}

/// Groups the request's samples by canonical label set (a series may appear more than once),
/// refusing series whose labels break Prometheus' rules.
fn collect(request: WriteRequest) -> (Collected, u64, Option<String>) {
    let mut collected = Collected::with_capacity(request.timeseries.len());
    let (mut invalid, mut first) = (0u64, None);
    for ts in request.timeseries {
        // Exemplar- or histogram-only series carry no float samples: nothing to store.
        if ts.samples.is_empty() {
            continue;
        }
        let raw: Vec<Label> = ts
            .labels
            .into_iter()
            .map(|l| Label::new(l.name, l.value))
            .collect();
        match Labels::check(raw) {
            Ok(labels) => collected.extend(
                labels,
                ts.samples.iter().map(|s| Sample::new(s.timestamp, s.value)),
            ),
            Err((e, raw)) => {
                invalid += 1;
                first.get_or_insert_with(|| {
                    let text = ingest::describe_labels(
                        raw.iter().map(|l| (l.name.as_str(), l.value.as_str())),
                    );
                    format!("series {text}: {e}")
                });
            }
        }
    }
    (collected, invalid, first)
}

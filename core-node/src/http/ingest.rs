//! What the write endpoints (`remote_write.rs`, `influx.rs`) share: reading a bounded body,
//! turning collected samples into storage batches, submitting them and waiting until they are
//! durable, and answering errors in each protocol's shape with a counter.
//!
//! # From a request to storage
//!
//! A handler collects samples per label set ([`Collected`]); [`Collected::into_batches`]
//! sorts each series' samples (the last of equal timestamps wins) and packs the series into
//! [`SampleBatch`]es of about [`BATCH_TARGET_BYTES`], far below the WAL's record limit. The
//! samples stay decoded: the WAL logs them as they are and the head keeps them so, until a
//! head flush cuts chunks (see `storage::record`). Sample batches have no agent and no
//! `(epoch, sequence)`, so the writer applies every one and records no offset. A client that
//! retries a request after a failure (Prometheus does) rewrites the same samples, which is
//! harmless.
//!
//! [`submit`] queues every batch and answers only once all are durable. A full writer queue or
//! a stopped writer answers 503 with `Retry-After` (retryable in both protocols; Prometheus
//! 2.x does not retry a 429 unless configured to).
//!
//! # Metrics
//!
//! - `updraft_core_ingest_samples_total{protocol}`: samples stored.
//! - `updraft_core_ingest_rejected_total{protocol,reason}`: refusals, one per refused request,
//!   series or line (see [`Reason`]).
//! - `updraft_core_ingest_fields_skipped_total{protocol,reason="string"}`: InfluxDB string
//!   fields, which have no place in a time series of floats.

use super::Api;
use crate::storage::{SampleBatch, Storage, SubmitError};
use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocols::wire::AckOutcome;
use protocols::{Labels, Sample, Tenant};
use std::pin::Pin;
use std::sync::Arc;

/// Largest accepted write body as sent (compressed or not).
pub const MAX_WRITE_BODY_BYTES: usize = 16 << 20;
/// Largest accepted write body once decompressed (snappy or gzip); checked before
/// decompressing where the format announces its size.
pub const MAX_DECODED_BYTES: usize = 32 << 20;
/// Write requests decoded at once; more wait for a slot before their body is read, which
/// bounds the memory of bodies and decoded series.
pub const MAX_CONCURRENT_WRITES: usize = 4;
/// A batch is closed once its labels and samples (16 bytes each) reach about this size.
pub const BATCH_TARGET_BYTES: usize = 4 << 20;

pub(crate) const INGEST_SAMPLES: &str = "updraft_core_ingest_samples_total";
pub(crate) const INGEST_REJECTED: &str = "updraft_core_ingest_rejected_total";
pub(crate) const FIELDS_SKIPPED: &str = "updraft_core_ingest_fields_skipped_total";

/// Which write endpoint; the `protocol` label of the ingest counters and the error body's
/// shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `POST /api/v1/write`: errors are plain text, as Prometheus answers.
    RemoteWrite,
    /// `POST /write`: errors are `{"error":"..."}`, as InfluxDB 1.x answers.
    InfluxV1,
    /// `POST /api/v2/write`: errors are `{"code":"...","message":"..."}`, as InfluxDB 2.x
    /// answers.
    InfluxV2,
}

impl Protocol {
    const ALL: [Self; 3] = [Self::RemoteWrite, Self::InfluxV1, Self::InfluxV2];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::RemoteWrite => "remote_write",
            Self::InfluxV1 => "influx_v1",
            Self::InfluxV2 => "influx_v2",
        }
    }
}

/// The `reason` label of `updraft_core_ingest_rejected_total`: a small fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// The body (or its announced decoded size) is over the limit. Per request.
    BodyTooLarge,
    /// The body could not be read (the client hung up mid-way). Per request.
    BodyRead,
    /// An unsupported `Content-Encoding` or `Content-Type`. Per request.
    UnsupportedMediaType,
    /// remote_write: not a snappy block. Per request.
    BadSnappy,
    /// remote_write: not a `WriteRequest`. Per request.
    BadProtobuf,
    /// InfluxDB: a `Content-Encoding: gzip` body that is not gzip. Per request.
    BadGzip,
    /// InfluxDB: the body is not UTF-8. Per request.
    BadUtf8,
    /// A bad query parameter (`precision`). Per request.
    BadParam,
    /// A label set that breaks Prometheus' rules (no `__name__`, bad or duplicate names).
    /// Per series (remote_write) or line (InfluxDB).
    InvalidLabels,
    /// InfluxDB: a line that does not parse. Per line.
    BadLine,
    /// InfluxDB: a timestamp that does not fit milliseconds in 64 bits. Per line.
    BadTimestamp,
    /// Storage refused a series (limits, retention). Per series.
    SeriesRefused,
    /// The writer's queue is full (retryable). Per request.
    Busy,
    /// Storage is stopping or failed (retryable). Per request.
    Unavailable,
    /// The tenant is over `--ingest-rate-limit` (retryable, 429). Per request.
    RateLimited,
}

impl Reason {
    const ALL: [Self; 15] = [
        Self::BodyTooLarge,
        Self::BodyRead,
        Self::UnsupportedMediaType,
        Self::BadSnappy,
        Self::BadProtobuf,
        Self::BadGzip,
        Self::BadUtf8,
        Self::BadParam,
        Self::InvalidLabels,
        Self::BadLine,
        Self::BadTimestamp,
        Self::SeriesRefused,
        Self::Busy,
        Self::Unavailable,
        Self::RateLimited,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::BodyTooLarge => "body_too_large",
            Self::BodyRead => "body_read",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadSnappy => "bad_snappy",
            Self::BadProtobuf => "bad_protobuf",
            Self::BadGzip => "bad_gzip",
            Self::BadUtf8 => "bad_utf8",
            Self::BadParam => "bad_param",
            Self::InvalidLabels => "invalid_labels",
            Self::BadLine => "bad_line",
            Self::BadTimestamp => "bad_timestamp",
            Self::SeriesRefused => "series_refused",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Exports the ingest counters at 0 for every protocol and reason, so a scrape shows each
/// series before its first event (Prometheus' advice for known label values).
pub(crate) fn register_metrics() {
    for protocol in Protocol::ALL {
        metrics::counter!(INGEST_SAMPLES, "protocol" => protocol.as_str()).absolute(0);
        for reason in Reason::ALL {
            metrics::counter!(INGEST_REJECTED, "protocol" => protocol.as_str(), "reason" => reason.as_str())
                .absolute(0);
        }
    }
    for protocol in [Protocol::InfluxV1, Protocol::InfluxV2] {
        metrics::counter!(FIELDS_SKIPPED, "protocol" => protocol.as_str(), "reason" => "string")
            .absolute(0);
    }
}

/// Counts `n` refusals. Call it on the request's task, not in the blocking pool, so a
/// thread-local recorder (tests) sees it.
pub(crate) fn count_rejected(protocol: Protocol, reason: Reason, n: u64) {
    if n > 0 {
        metrics::counter!(INGEST_REJECTED, "protocol" => protocol.as_str(), "reason" => reason.as_str())
            .increment(n);
    }
}

/// A write request's failure (or partial failure), answered in the protocol's shape.
#[derive(Debug)]
pub(crate) struct IngestError {
    protocol: Protocol,
    status: StatusCode,
    message: String,
    /// Counted when the response is built; `None` when the parts were counted already.
    reason: Option<Reason>,
    /// `Retry-After` in seconds (503 always says 1).
    retry_after_secs: Option<u64>,
}

impl IngestError {
    pub(crate) fn new(
        protocol: Protocol,
        status: StatusCode,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            protocol,
            status,
            message: message.into(),
            reason: Some(reason),
            retry_after_secs: None,
        }
    }

    /// 400, counted under `reason`.
    pub(crate) fn bad(protocol: Protocol, reason: Reason, message: impl Into<String>) -> Self {
        Self::new(protocol, StatusCode::BAD_REQUEST, reason, message)
    }

    /// 400 for a request whose refused parts were already counted one by one.
    pub(crate) fn partial(protocol: Protocol, message: impl Into<String>) -> Self {
        Self {
            protocol,
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            reason: None,
            retry_after_secs: None,
        }
    }

    fn internal(protocol: Protocol, message: impl Into<String>) -> Self {
        Self {
            protocol,
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            reason: None,
            retry_after_secs: None,
        }
    }

    pub(crate) fn unavailable(protocol: Protocol, message: impl Into<String>) -> Self {
        Self::new(
            protocol,
            StatusCode::SERVICE_UNAVAILABLE,
            Reason::Unavailable,
            message,
        )
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        if let Some(reason) = self.reason {
            count_rejected(self.protocol, reason, 1);
        }
        if self.status.is_server_error() {
            tracing::warn!(protocol = self.protocol.as_str(), status = %self.status, error = %self.message, "write failed");
        } else {
            tracing::debug!(protocol = self.protocol.as_str(), status = %self.status, error = %self.message, "write refused");
        }
        let (content_type, body) = match self.protocol {
            Protocol::RemoteWrite => ("text/plain; charset=utf-8", format!("{}\n", self.message)),
            Protocol::InfluxV1 => (
                "application/json",
                serde_json::json!({ "error": self.message }).to_string(),
            ),
            Protocol::InfluxV2 => {
                let code = match self.status {
                    StatusCode::PAYLOAD_TOO_LARGE => "request too large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported media type",
                    StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                    StatusCode::TOO_MANY_REQUESTS => "too many requests",
                    s if s.is_server_error() => "internal error",
                    _ => "invalid",
                };
                (
                    "application/json",
                    serde_json::json!({ "code": code, "message": self.message }).to_string(),
                )
            }
        };
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response();
        let retry_after = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => self.retry_after_secs,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl Api {
    /// Refuses (429) a write of `tenant` while its rate-limit bucket is empty. Call before
    /// reading the body.
    pub(crate) fn admit(&self, protocol: Protocol, tenant: &Tenant) -> Result<(), IngestError> {
        let Some(limit) = &self.rate_limit else {
            return Ok(());
        };
        limit
            .admit(tenant, std::time::Instant::now())
            .map_err(|secs| IngestError {
                protocol,
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "tenant {tenant} is over its ingest rate limit of {} samples/s; retry in {secs} s",
                    limit.samples_per_sec()
                ),
                reason: Some(Reason::RateLimited),
                retry_after_secs: Some(secs),
            })
    }

    /// Takes the samples of `batches` from `tenant`'s rate-limit bucket.
    pub(crate) fn charge(&self, tenant: &Tenant, batches: &[SampleBatch]) {
        if let Some(limit) = &self.rate_limit {
            let samples: usize = batches.iter().map(SampleBatch::sample_count).sum();
            limit.take(tenant, samples as u64, std::time::Instant::now());
        }
    }

    /// The storage handle and a write slot, or 503 when this router has no storage to write.
    pub(crate) async fn write_slot(
        &self,
        protocol: Protocol,
    ) -> Result<(WriteTarget, tokio::sync::OwnedSemaphorePermit), IngestError> {
        let Some(storage) = self.state.ingest.clone() else {
            return Err(IngestError::unavailable(
                protocol,
                "this node does not accept writes",
            ));
        };
        let permit = Arc::clone(&self.write_slots)
            .acquire_owned()
            .await
            .map_err(|_| IngestError::unavailable(protocol, "write slots closed"))?;
        let target = WriteTarget {
            storage,
            cluster: self.state.cluster.clone(),
        };
        Ok((target, permit))
    }
}

/// Where a write goes: the node's storage, or (clustered) the shard groups of its series.
pub(crate) struct WriteTarget {
    storage: Storage,
    cluster: Option<Arc<crate::cluster::node::ClusterNode>>,
}

/// Reads the whole body, refusing one over [`MAX_WRITE_BODY_BYTES`] with 413 (from its
/// `Content-Length` before reading anything, otherwise as soon as it is passed).
pub(crate) async fn read_body(
    protocol: Protocol,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<Vec<u8>, IngestError> {
    let too_large = || {
        IngestError::new(
            protocol,
            StatusCode::PAYLOAD_TOO_LARGE,
            Reason::BodyTooLarge,
            format!("request body is larger than {MAX_WRITE_BODY_BYTES} bytes"),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_WRITE_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(announced.map_or(0, |n| {
        usize::try_from(n).unwrap_or(0).min(MAX_WRITE_BODY_BYTES)
    }));
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            IngestError::bad(
                protocol,
                Reason::BodyRead,
                format!("reading the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_WRITE_BODY_BYTES {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Samples gathered from one request, per series, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    series: foldhash::HashMap<Labels, Vec<Sample>>,
}

impl Collected {
    /// Room for `series` series without growing.
    pub(crate) fn with_capacity(series: usize) -> Self {
        Self {
            series: foldhash::HashMap::with_capacity_and_hasher(series, Default::default()),
        }
    }

    pub(crate) fn extend(&mut self, labels: Labels, samples: impl IntoIterator<Item = Sample>) {
        self.series.entry(labels).or_default().extend(samples);
    }

    /// [`Collected::extend`] that keeps `samples`' allocation when the series is new.
    pub(crate) fn append(&mut self, labels: Labels, mut samples: Vec<Sample>) {
        match self.series.entry(labels) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(samples);
            }
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().append(&mut samples),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Sorts every series' samples (the last arrival of a timestamp wins) and packs the series
    /// into batches of about [`BATCH_TARGET_BYTES`] for `tenant` (CPU work: call it on the
    /// blocking pool). A series larger than that is split across batches.
    pub(crate) fn into_batches(self, tenant: &Tenant) -> Vec<SampleBatch> {
        let mut batches = Vec::new();
        let mut current = SampleBatch {
            tenant: tenant.clone(),
            series: Vec::with_capacity(self.series.len()),
        };
        let mut current_bytes = 0usize;
        for (labels, mut samples) in self.series {
            if samples.is_empty() {
                continue;
            }
            sort_last_wins(&mut samples);
            let label_bytes: usize = labels
                .iter()
                .map(|l| l.name.len() + l.value.len() + 4)
                .sum();
            let mut rest = samples;
            loop {
                let room =
                    BATCH_TARGET_BYTES.saturating_sub(current_bytes + label_bytes) / SAMPLE_BYTES;
                if room == 0 && !current.series.is_empty() {
                    batches.push(std::mem::replace(
                        &mut current,
                        SampleBatch {
                            tenant: tenant.clone(),
                            series: Vec::new(),
                        },
                    ));
                    current_bytes = 0;
                    continue;
                }
                let take = rest.len().min(room.max(1));
                current_bytes += label_bytes + take * SAMPLE_BYTES;
                if take == rest.len() {
                    current.series.push((labels, rest));
                    break;
                }
                let tail = rest.split_off(take);
                current.series.push((labels.clone(), rest));
                rest = tail;
            }
        }
        if !current.series.is_empty() {
            batches.push(current);
        }
        batches
    }
}

/// Bytes of one sample in a batch (and in the WAL record it becomes).
const SAMPLE_BYTES: usize = 16;

/// Sorts samples by timestamp and keeps the last arrival of each timestamp (a stable sort
/// keeps arrivals in order). Samples already strictly ascending, the usual case, are left as
/// they are.
fn sort_last_wins(samples: &mut Vec<Sample>) {
    if samples
        .windows(2)
        .all(|w| w[0].timestamp_ms < w[1].timestamp_ms)
    {
        return;
    }
    samples.sort_by_key(|s| s.timestamp_ms);
    samples.reverse();
    samples.dedup_by_key(|s| s.timestamp_ms);
    samples.reverse();
}

/// What storage did with a request's batches.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    pub samples: u64,
    /// Series storage refused (limits, retention), already counted.
    pub refused_series: u64,
    /// Why the first of them was refused.
    pub refusal: Option<String>,
}

/// Queues every batch, then waits until each is durable.
pub(crate) async fn submit(
    protocol: Protocol,
    target: &WriteTarget,
    batches: Vec<SampleBatch>,
) -> Result<Stored, IngestError> {
    if let Some(cluster) = &target.cluster {
        // Committed on a quorum of every group the batches touch, or an error naming the
        // group that could not commit: the client retries (docs/cluster.md).
        let outcome = cluster
            .write_samples(batches)
            .await
            .map_err(|e| IngestError::unavailable(protocol, format!("{e}; retry later")))?;
        metrics::counter!(INGEST_SAMPLES, "protocol" => protocol.as_str())
            .increment(outcome.stored);
        count_rejected(protocol, Reason::SeriesRefused, u64::from(outcome.refused));
        return Ok(Stored {
            samples: outcome.stored,
            refused_series: u64::from(outcome.refused),
            refusal: outcome.rejection,
        });
    }
    let storage = &target.storage;
    let mut pending = Vec::with_capacity(batches.len());
    for batch in batches {
        match storage.submit_samples(batch) {
            Ok(p) => pending.push(p),
            // Batches already queued are stored anyway; the client's retry rewrites them.
            Err(SubmitError::Busy(_)) => {
                return Err(IngestError::new(
                    protocol,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Reason::Busy,
                    "write queue is full, retry later",
                ));
            }
            Err(SubmitError::Stopped(_)) => {
                return Err(IngestError::unavailable(
                    protocol,
                    "storage is shutting down",
                ));
            }
            // Read-only (disk almost full) or failed: the client keeps its data and retries.
            Err(SubmitError::Unavailable { reason, .. }) => {
                return Err(IngestError::unavailable(
                    protocol,
                    format!("storage refuses writes, retry later: {reason}"),
                ));
            }
        }
    }
    let mut stored = Stored::default();
    for p in pending {
        match p.await {
            Ok(Ok(AckOutcome::Stored {
                samples,
                rejected_series,
                rejection,
            })) => {
                stored.samples += samples;
                stored.refused_series += u64::from(rejected_series);
                if stored.refusal.is_none() {
                    stored.refusal = rejection;
                }
            }
            // Untracked batches are never duplicates; nothing to add if one were.
            Ok(Ok(AckOutcome::Duplicate)) => {}
            Ok(Ok(AckOutcome::Failed { code, message })) => {
                return Err(if code.is_retryable() {
                    IngestError::unavailable(protocol, message)
                } else {
                    IngestError::internal(protocol, message)
                });
            }
            // Nothing of the batch was applied: a storage error is the node's, never the
            // client's, and the client keeps its data and retries.
            Ok(Err(e)) => {
                return Err(IngestError::unavailable(
                    protocol,
                    format!("{e}; retry later"),
                ));
            }
            Err(_) => return Err(IngestError::unavailable(protocol, "storage writer stopped")),
        }
    }
    metrics::counter!(INGEST_SAMPLES, "protocol" => protocol.as_str()).increment(stored.samples);
    count_rejected(protocol, Reason::SeriesRefused, stored.refused_series);
    Ok(stored)
}

/// Runs the CPU-bound part of a write on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    protocol: Protocol,
    f: impl FnOnce() -> Result<T, IngestError> + Send + 'static,
) -> Result<T, IngestError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(IngestError::internal(
            protocol,
            format!("write task failed: {e}"),
        ))
    })
}

/// `{a="1",b="2"}` of raw labels, at most about 200 bytes, for error messages.
pub(crate) fn describe_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("{");
    for (i, (n, v)) in labels.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{n}={v:?}"));
        if out.len() > 200 {
            let cut = (0..=200)
                .rev()
                .find(|i| out.is_char_boundary(*i))
                .unwrap_or(0);
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out.push('}');
    out
}

/// The success answer of every write endpoint.
pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The `Content-Encoding` header, lowercased; `None` when absent or `identity`.
pub(crate) fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "identity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_every_sample_sorted_with_the_last_arrival_winning() {
        let labels = Labels::from_metric("m", [("k", "v")]).expect("valid");
        let other = Labels::from_metric("n", [("k", "v")]).expect("valid");
        let mut c = Collected::with_capacity(2);
        // Out of order, with timestamp 20 sent twice: the second value wins.
        for (t, v) in [(30, 3.0), (20, 2.0), (10, 1.0), (20, 22.0)] {
            c.extend(labels.clone(), [Sample::new(t, v)]);
        }
        c.append(other.clone(), vec![Sample::new(5, 0.5)]);
        let batches = c.into_batches(&Tenant::default());
        assert_eq!(batches.len(), 1);
        let mut series = batches[0].series.clone();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            series,
            vec![
                (
                    labels,
                    vec![
                        Sample::new(10, 1.0),
                        Sample::new(20, 22.0),
                        Sample::new(30, 3.0)
                    ]
                ),
                (other, vec![Sample::new(5, 0.5)]),
            ]
        );
    }

    #[test]
    fn a_series_larger_than_a_batch_is_split_in_time_order() {
        let labels = Labels::from_metric("m", [("k", "v")]).expect("valid");
        let n = BATCH_TARGET_BYTES / SAMPLE_BYTES * 5 / 2;
        let mut c = Collected::with_capacity(1);
        c.extend(
            labels.clone(),
            (0..n as i64).map(|t| Sample::new(t, t as f64)),
        );
        let batches = c.into_batches(&Tenant::default());
        assert_eq!(batches.len(), 3);
        let mut next = 0i64;
        for b in &batches {
            assert!(b.sample_count() * SAMPLE_BYTES <= BATCH_TARGET_BYTES);
            for (l, samples) in &b.series {
                assert_eq!(l, &labels);
                for s in samples {
                    assert_eq!(s.timestamp_ms, next);
                    next += 1;
                }
            }
        }
        assert_eq!(next as usize, n, "every sample, once");
    }
}

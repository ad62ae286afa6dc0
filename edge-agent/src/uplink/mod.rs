//! Shipping buffered samples to a core node and advancing the buffer's cursor on acknowledgement.
//!
//! One batch is in flight at a time. Normally batches go in buffer order; after an outage the
//! uplink sends fresh data first and drains the backlog behind it at `--backlog-rate` ([`lanes`]
//! explains the two lanes, the shared cursor and why sequences still only grow per epoch). A
//! resend always covers the same records. The core is the healthy one with the lowest
//! round-trip time the transport measures ([`Transport::rtts`]; [`select`] has the rules: a
//! core whose delivery failed is held off for [`FAILOVER_HOLD`], small differences do not
//! make the uplink switch). Per batch:
//!
//! - `Stored` / `Duplicate`: acknowledge the buffer up to the batch's end.
//! - `Failed` with a non-retryable code: log, count the samples as dropped, acknowledge anyway
//!   (a batch the core will never take must not wedge everything behind it).
//! - transport error, timeout or retryable code: count an error for the endpoint, move to the
//!   fastest other healthy endpoint (the next `--core` in order when none is measured), back
//!   off exponentially with jitter (capped), resend the same frame.
//!
//! The network sits behind [`Transport`] (production: [`quic::QuicTransport`]) so tests can put
//! a scripted core in its place and inject faults.

mod batch;
mod lanes;
pub(crate) mod quic;
mod select;

use crate::buffer::{LogError, LogReader, Offset};
use crate::config::CoreEndpoint;
use crate::ingest::Progress;
use crate::telemetry::{self, DropReason};
use batch::{Batch, Prepared};
use bytes::Bytes;
use lanes::{Lane, Lanes};
use metrics::{counter, gauge};
use protocols::wire::{
    AckOutcome, AgentId, BatchAck, ErrorCode, Message, ResumePoint, ResumeQuery, WireError,
};
use select::Selector;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub(crate) use quic::TransportError;

/// How long an in-flight batch may still finish after shutdown was requested. Its samples are
/// durable either way; finishing only saves a resend.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often the buffer gauges are refreshed while idle.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);
/// How long a core whose delivery failed is passed over while another one is healthy.
pub(crate) const FAILOVER_HOLD: Duration = Duration::from_secs(10);

/// One request/response exchange with a core.
pub(crate) trait Transport: Send + 'static {
    /// Sends `frame` to `endpoint` on a fresh stream and returns the response frame.
    fn exchange(
        &mut self,
        endpoint: &CoreEndpoint,
        frame: Bytes,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;

    /// Closes connections politely; called once on shutdown.
    fn close(&mut self) -> impl Future<Output = ()> + Send;

    /// The round-trip time to each of `endpoints` (same order) over a live connection, `None`
    /// for an endpoint without one (not connected yet, or not answering). Cheap: called before
    /// every batch and every second. A transport that does not measure answers `None`
    /// everywhere, and the endpoints are used in configuration order.
    fn rtts(&mut self, endpoints: &[CoreEndpoint]) -> Vec<Option<Duration>> {
        vec![None; endpoints.len()]
    }
}

/// Exponential backoff with "equal jitter": attempt `n` waits a random time between half and
/// all of `min(base * 2^n, max)`, so a fleet of agents does not reconnect in lockstep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub(crate) const DEFAULT: Self = Self {
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << attempt.min(16)).min(self.max);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum UplinkError {
    #[error("buffer: {0}")]
    Buffer(#[from] LogError),
    #[error("buffer task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How [`Uplink::deliver`] ended.
enum Delivery {
    /// A core gave a final answer.
    Done,
    /// Stop was requested first.
    Stopped,
    /// The buffer evicted (part of) the batch while it could not be delivered.
    Evicted,
}

/// Why one delivery attempt did not produce an acknowledgement.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("undecodable answer: {0}")]
    Decode(#[from] WireError),
    #[error("answer is not a BatchAck")]
    NotAnAck,
    #[error("ack for epoch {got_epoch:x} sequence {got_sequence}, expected {want_sequence}")]
    WrongBatch {
        got_epoch: u64,
        got_sequence: u64,
        want_sequence: u64,
    },
    #[error("core answered {code}: {message}")]
    Retryable { code: &'static str, message: String },
}

pub(crate) struct UplinkSettings {
    pub agent_id: AgentId,
    pub endpoints: Vec<CoreEndpoint>,
    pub batch_max_samples: usize,
    pub batch_max_delay: Duration,
    pub backoff: Backoff,
    /// Most backlog samples per second after an outage (0: no limit).
    pub backlog_rate: u64,
    /// How long a core whose delivery failed is passed over ([`FAILOVER_HOLD`]).
    pub failover_hold: Duration,
}

pub(crate) struct Uplink<T> {
    transport: T,
    reader: LogReader,
    settings: UplinkSettings,
    progress: watch::Receiver<Progress>,
    stop: watch::Receiver<bool>,
    /// Which core is used, by index into `settings.endpoints`.
    selector: Selector,
    /// The transport's last round-trip times, per endpoint.
    rtts: Vec<Option<Duration>>,
    /// The last delivery needed retries: what piled up meanwhile becomes backlog.
    outage_over: bool,
    /// The durable end when the last failed delivery attempt began: data beyond it arrived
    /// during that attempt or after it (about when the core came back) and counts as fresh.
    failed_at_end: Offset,
}

impl<T: Transport> Uplink<T> {
    pub(crate) fn new(
        transport: T,
        reader: LogReader,
        settings: UplinkSettings,
        progress: watch::Receiver<Progress>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let selector = Selector::new(settings.endpoints.len(), settings.failover_hold);
        Self {
            transport,
            reader,
            selector,
            rtts: vec![None; settings.endpoints.len()],
            settings,
            progress,
            stop,
            outage_over: false,
            failed_at_end: Offset(0),
        }
    }

    /// Ships until `stop` turns true (or its sender is dropped). Returns an error only when the
    /// buffer itself fails.
    pub(crate) async fn run(mut self) -> Result<(), UplinkError> {
        let result = self.ship().await;
        self.transport.close().await;
        result
    }

    async fn ship(&mut self) -> Result<(), UplinkError> {
        let mut start = self.reader.acked();
        if let Some(resumed) = self.resume_point().await {
            self.ack(resumed).await?;
            start = resumed;
        }
        let mut lanes = Lanes::new(start, self.reader.epoch());
        // When the fresh lane's batch is due, and the progress count when it began to fill.
        let mut linger: Option<(Instant, u64)> = None;
        let mut backlog_due = Instant::now();
        loop {
            if self.stopping() {
                return Ok(());
            }
            self.progress.mark_unchanged();
            lanes.clamp(self.reader.acked());
            let end = self.reader.durable_end();
            let unsent = end.0.saturating_sub(lanes.fresh().0);
            if self.outage_over && unsent > 0 {
                let at = self.failed_at_end.clamp(lanes.fresh(), end);
                info!(
                    from = lanes.fresh().0,
                    to = at.0,
                    "backlog after an outage; fresh data goes first"
                );
                lanes.split(at);
                linger = None;
            } else if unsent > lanes::SPLIT_BYTES {
                info!(
                    from = lanes.fresh().0,
                    to = end.0,
                    "backlog; fresh data goes first"
                );
                lanes.split(end);
                linger = None;
            }
            self.outage_over = false;
            self.update_gauges(&lanes);
            self.refresh_endpoints();
            let now = Instant::now();
            if end > lanes.fresh() {
                let samples = self.progress.borrow().samples;
                let (due, base) =
                    *linger.get_or_insert((now + self.settings.batch_max_delay, samples));
                let arrived = samples.saturating_sub(base);
                if now >= due || arrived >= self.settings.batch_max_samples as u64 {
                    if self.send(&mut lanes, Lane::Fresh).await?.is_none() {
                        return Ok(());
                    }
                    // More is already waiting: no reason to linger for it.
                    linger =
                        (self.reader.durable_end() > lanes.fresh()).then(|| (Instant::now(), 0));
                    continue;
                }
            }
            if lanes.backlog().is_some() && now >= backlog_due {
                let Some(samples) = self.send(&mut lanes, Lane::Backlog).await? else {
                    return Ok(());
                };
                if self.settings.backlog_rate > 0 {
                    let secs = samples as f64 / self.settings.backlog_rate as f64;
                    backlog_due = Instant::now() + Duration::from_secs_f64(secs);
                }
                continue;
            }
            let mut wake = linger.map(|(due, _)| due);
            if lanes.backlog().is_some() {
                wake = Some(wake.map_or(backlog_due, |w| w.min(backlog_due)));
            }
            let wake = wake.unwrap_or_else(|| now + GAUGE_REFRESH);
            tokio::select! {
                changed = self.progress.changed() => {
                    // The ingest thread is gone (shutdown or failure): nothing more will come.
                    if changed.is_err() { return Ok(()); }
                }
                () = tokio::time::sleep_until(wake.min(now + GAUGE_REFRESH)) => {}
                _ = self.stop.changed() => {}
            }
        }
    }

    /// Prepares and delivers one batch of `lane`, then moves the cursor. The batch's sample
    /// count, or `None` if stopped first.
    async fn send(&mut self, lanes: &mut Lanes, lane: Lane) -> Result<Option<u64>, UplinkError> {
        let max = self.settings.batch_max_samples;
        let (range, max) = match (lane, lanes.backlog()) {
            (Lane::Backlog, Some(range)) => {
                let rate = usize::try_from(self.settings.backlog_rate).unwrap_or(usize::MAX);
                (range, if rate > 0 { max.min(rate) } else { max })
            }
            _ => ((lanes.fresh(), Offset(u64::MAX)), max),
        };
        let (reader, agent_id) = (self.reader.clone(), self.settings.agent_id.clone());
        let epoch = lanes.epoch(lane);
        let prepared = tokio::task::spawn_blocking(move || {
            batch::prepare(&reader, &agent_id, epoch, range, max.max(1))
        })
        .await??;
        let samples = match prepared {
            // Only if the files end before the durable end (changed behind our back):
            // pause instead of spinning.
            Prepared::Empty => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                0
            }
            Prepared::Skip {
                next: skip_to,
                corrupt_bytes,
                dropped_samples,
            } => {
                counter!(telemetry::BUFFER_CORRUPT_BYTES).increment(corrupt_bytes);
                counter!(telemetry::SAMPLES_DROPPED, "reason" => DropReason::FrameTooLarge.as_str())
                    .increment(dropped_samples);
                lanes.delivered(lane, skip_to);
                0
            }
            Prepared::Batch(batch) => {
                match self.deliver(&batch).await? {
                    Delivery::Stopped => return Ok(None),
                    // Re-read from the new cursor: the part that is left gets a new batch.
                    Delivery::Evicted => 0,
                    Delivery::Done => {
                        lanes.delivered(lane, batch.end);
                        batch.samples
                    }
                }
            }
        };
        lanes.clamp(self.reader.acked());
        self.ack(lanes.cursor().min(self.reader.durable_end()))
            .await?;
        self.update_gauges(lanes);
        Ok(Some(samples))
    }

    /// Buffer gauges: backlog bytes, and the age of the oldest sample not yet acknowledged.
    fn update_gauges(&self, lanes: &Lanes) {
        gauge!(telemetry::UPLINK_BACKLOG_BYTES).set(lanes.backlog_bytes() as f64);
        let acked = self.reader.acked();
        let age = if acked < self.reader.durable_end() {
            oldest_timestamp_ms(&self.reader, acked).map_or(0.0, |ts| {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                (now_ms - ts).max(0) as f64 / 1000.0
            })
        } else {
            0.0
        };
        gauge!(telemetry::OLDEST_UNSENT_AGE).set(age);
    }

    /// Asks the current core how far it has applied this agent's batches. After a crash
    /// between the core's acknowledgement and our cursor update, the answer lies ahead of the
    /// cursor: what lies between is already stored and need not be sent again. Resending would
    /// be harmless (the core deduplicates), so any failure here just means "start at the
    /// cursor". Only an answer in this buffer's epoch, at or below its durable end, is used;
    /// it is a record boundary because sequences are batch end offsets.
    async fn resume_point(&mut self) -> Option<Offset> {
        let endpoint = self
            .settings
            .endpoints
            .get(self.selector.current())?
            .clone();
        let query = Message::ResumeQuery(ResumeQuery {
            agent_id: self.settings.agent_id.clone(),
        })
        .encode();
        let exchange = self.transport.exchange(&endpoint, Bytes::from(query));
        let answer = tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .ok()?
            .ok()?;
        let Ok(Message::ResumePoint(ResumePoint {
            applied: Some((epoch, sequence)),
        })) = Message::decode(&answer)
        else {
            return None;
        };
        let (acked, end) = (self.reader.acked(), self.reader.durable_end());
        if epoch != self.reader.epoch().0 || sequence <= acked.0 || sequence > end.0 {
            return None;
        }
        info!(core = %endpoint, from = acked.0, to = sequence,
            "core already holds buffered batches; resuming after them");
        Some(Offset(sequence))
    }

    /// Sends `batch` until a core gives a final answer. False if stopped before that.
    async fn deliver(&mut self, batch: &Batch) -> Result<Delivery, UplinkError> {
        let mut attempt = 0u32;
        self.refresh_endpoints();
        loop {
            // A full buffer gave up (part of) this batch while no core answered: its samples
            // are counted as dropped there, so they must not arrive after all.
            if attempt > 0 && self.reader.acked() > batch.start {
                warn!(
                    sequence = batch.end.0,
                    "undelivered batch evicted from the full buffer"
                );
                return Ok(Delivery::Evicted);
            }
            let current = self.selector.current();
            let endpoint = self.settings.endpoints[current].clone();
            let end_at_start = self.reader.durable_end();
            let answer = self.exchange(&endpoint, batch.frame.clone()).await;
            if !matches!(answer, Some(Ok(_))) {
                self.failed_at_end = end_at_start;
            }
            let Some(answer) = answer else {
                return Ok(Delivery::Stopped);
            };
            if answer.is_ok() {
                // The core has seen the batch, whatever it answered.
                counter!(telemetry::SAMPLES_SHIPPED).increment(batch.samples);
            }
            match answer
                .map_err(AttemptError::from)
                .and_then(|f| decode_ack(&f, batch))
            {
                Ok(AckOutcome::Stored {
                    samples,
                    rejected_series,
                    rejection,
                }) => {
                    // Only refused series are losses: a core may also count fewer samples
                    // because duplicate timestamps within the batch collapse into one.
                    let dropped = if rejected_series > 0 {
                        batch.samples.saturating_sub(samples)
                    } else {
                        0
                    };
                    if rejected_series > 0 {
                        warn!(core = %endpoint, rejected_series, dropped_samples = dropped,
                            reason = rejection.as_deref().unwrap_or("not given"),
                            "core stored the batch but refused some series");
                    }
                    self.count_dropped(DropReason::RejectedByCore, dropped);
                    counter!(telemetry::SAMPLES_ACKED).increment(batch.samples - dropped);
                }
                Ok(AckOutcome::Duplicate) => {
                    debug!(sequence = batch.end.0, "core already had this batch");
                    counter!(telemetry::SAMPLES_ACKED).increment(batch.samples);
                }
                // A refusal of the agent itself (its certificate's tenant or agent id) is a
                // configuration problem that an operator fixes: the batch stays buffered and is
                // retried with back-off, like an outage, rather than thrown away.
                Ok(AckOutcome::Failed { code, message })
                    if !code.is_retryable() && code != ErrorCode::Unauthorized =>
                {
                    error!(core = %endpoint, code = code.as_str(), %message, samples = batch.samples,
                        "core rejected a batch for good; dropping it");
                    self.count_dropped(DropReason::RejectedByCore, batch.samples);
                }
                Ok(AckOutcome::Failed { code, message }) => {
                    let e = AttemptError::Retryable {
                        code: code.as_str(),
                        message,
                    };
                    if !self.fail_over(current, &e, &mut attempt).await {
                        return Ok(Delivery::Stopped);
                    }
                    continue;
                }
                Err(e) => {
                    if !self.fail_over(current, &e, &mut attempt).await {
                        return Ok(Delivery::Stopped);
                    }
                    continue;
                }
            }
            if attempt > 0 {
                info!(core = %endpoint, attempts = attempt + 1, "batch delivered after retries");
                self.outage_over = true;
            }
            return Ok(Delivery::Done);
        }
    }

    /// One exchange; on stop the in-flight exchange gets [`SHUTDOWN_GRACE`] to finish.
    /// `None` if abandoned because of the stop.
    async fn exchange(
        &mut self,
        endpoint: &CoreEndpoint,
        frame: Bytes,
    ) -> Option<Result<Vec<u8>, TransportError>> {
        let exchange = self.transport.exchange(endpoint, frame);
        tokio::pin!(exchange);
        tokio::select! {
            result = &mut exchange => Some(result),
            () = stop_requested(&mut self.stop) => {
                tokio::time::timeout(SHUTDOWN_GRACE, exchange).await.ok()
            }
        }
    }

    /// Counts the failure, switches to another endpoint and backs off. False on stop.
    async fn fail_over(&mut self, failed: usize, e: &AttemptError, attempt: &mut u32) -> bool {
        let endpoint = &self.settings.endpoints[failed];
        counter!(telemetry::UPLINK_ERRORS, "endpoint" => endpoint.to_string()).increment(1);
        let delay = self.settings.backoff.delay(*attempt);
        *attempt = attempt.saturating_add(1);
        self.rtts = self.transport.rtts(&self.settings.endpoints);
        let next = self.selector.failed(failed, &self.rtts, Instant::now());
        self.publish_endpoints();
        let endpoint = &self.settings.endpoints[failed];
        warn!(core = %endpoint, error = %e, retry_in = ?delay,
            next_core = %self.settings.endpoints[next], "batch delivery failed");
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = stop_requested(&mut self.stop) => false,
        }
    }

    /// Asks the transport for fresh round-trip times, chooses the core, updates the gauges.
    fn refresh_endpoints(&mut self) {
        self.rtts = self.transport.rtts(&self.settings.endpoints);
        let before = self.selector.current();
        let now = self.selector.choose(&self.rtts, Instant::now());
        if now != before {
            let ms = |i: usize| self.rtts[i].map(|r| r.as_secs_f64() * 1000.0);
            info!(from = %self.settings.endpoints[before], from_rtt_ms = ?ms(before),
                to = %self.settings.endpoints[now], to_rtt_ms = ?ms(now),
                "switching core");
        }
        self.publish_endpoints();
    }

    /// `updraft_edge_uplink_rtt_seconds` (NaN without a live connection) and
    /// `updraft_edge_uplink_active` per endpoint.
    fn publish_endpoints(&self) {
        let current = self.selector.current();
        for (i, endpoint) in self.settings.endpoints.iter().enumerate() {
            let label = endpoint.to_string();
            let rtt = self.rtts.get(i).copied().flatten();
            gauge!(telemetry::UPLINK_RTT, "endpoint" => label.clone())
                .set(rtt.map_or(f64::NAN, |r| r.as_secs_f64()));
            gauge!(telemetry::UPLINK_ACTIVE, "endpoint" => label).set(if i == current {
                1.0
            } else {
                0.0
            });
        }
    }

    async fn ack(&self, upto: Offset) -> Result<(), UplinkError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || reader.ack(upto)).await??;
        gauge!(telemetry::BUFFER_BYTES).set(self.reader.unacked_bytes() as f64);
        Ok(())
    }

    fn count_dropped(&self, reason: DropReason, samples: u64) {
        if samples > 0 {
            counter!(telemetry::SAMPLES_DROPPED, "reason" => reason.as_str()).increment(samples);
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }
}

/// The smallest sample timestamp of the record at `at` (reads one record; blocking, but
/// one small read of a page the ingest thread just wrote or the uplink just read).
fn oldest_timestamp_ms(reader: &LogReader, at: Offset) -> Option<i64> {
    let chunk = reader.read(at, 1).ok()?;
    let body = crate::buffer::record::decode(&chunk.records.first()?.payload).ok()?;
    body.series
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| x.timestamp_ms))
        .min()
}

/// Resolves once stop is requested or its sender is gone. The guard `wait_for` returns is
/// dropped here: it is not `Send` and must not live across an await.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn decode_ack(frame: &[u8], batch: &Batch) -> Result<AckOutcome, AttemptError> {
    let Message::BatchAck(BatchAck {
        epoch,
        sequence,
        outcome,
    }) = Message::decode(frame)?
    else {
        return Err(AttemptError::NotAnAck);
    };
    // A core that refused a frame before reading it (its memory budget was exhausted) cannot
    // name the batch: a retryable answer for (0, 0) is this batch's.
    let unread = epoch == 0
        && sequence == 0
        && matches!(&outcome, AckOutcome::Failed { code, .. } if code.is_retryable());
    if !unread && (epoch != batch.epoch.0 || sequence != batch.end.0) {
        return Err(AttemptError::WrongBatch {
            got_epoch: epoch,
            got_sequence: sequence,
            want_sequence: batch.end.0,
        });
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests;

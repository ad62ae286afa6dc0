//! Shipping buffered samples to a core node and advancing the buffer's cursor on acknowledgement.
//!
//! One batch is in flight at a time, in buffer order: `(epoch, sequence)` then only grows and a
//! resend always covers the same records. Per batch:
//!
//! - `Stored` / `Duplicate`: acknowledge the buffer up to the batch's end.
//! - `Failed` with a non-retryable code: log, count the samples as dropped, acknowledge anyway
//!   (a batch the core will never take must not wedge everything behind it).
//! - transport error, timeout or retryable code: count an error for the endpoint, move to the
//!   next `--core` endpoint, back off exponentially with jitter (capped), resend the same frame.
//!
//! The network sits behind [`Transport`] (production: [`quic::QuicTransport`]) so tests can put
//! a scripted core in its place and inject faults.

mod batch;
pub(crate) mod quic;

use crate::buffer::{LogError, LogReader, Offset};
use crate::config::CoreEndpoint;
use crate::ingest::Progress;
use crate::telemetry::{self, DropReason};
use batch::{Batch, Prepared};
use bytes::Bytes;
use metrics::{counter, gauge};
use protocols::wire::{
    AckOutcome, AgentId, BatchAck, Message, ResumePoint, ResumeQuery, WireError,
};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub(crate) use quic::TransportError;

/// How long an in-flight batch may still finish after shutdown was requested. Its samples are
/// durable either way; finishing only saves a resend.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
}

pub(crate) struct Uplink<T> {
    transport: T,
    reader: LogReader,
    settings: UplinkSettings,
    progress: watch::Receiver<Progress>,
    stop: watch::Receiver<bool>,
    /// Index into `settings.endpoints` of the core currently used.
    current: usize,
}

impl<T: Transport> Uplink<T> {
    pub(crate) fn new(
        transport: T,
        reader: LogReader,
        settings: UplinkSettings,
        progress: watch::Receiver<Progress>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            transport,
            reader,
            settings,
            progress,
            stop,
            current: 0,
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
        let mut next = self.reader.acked();
        if let Some(resumed) = self.resume_point().await {
            self.ack(resumed).await?;
            next = resumed;
        }
        loop {
            let Some(waited) = self.wait_for_data(next).await else {
                return Ok(());
            };
            if waited && !self.linger().await {
                return Ok(());
            }
            let (reader, agent_id) = (self.reader.clone(), self.settings.agent_id.clone());
            let max = self.settings.batch_max_samples;
            let prepared =
                tokio::task::spawn_blocking(move || batch::prepare(&reader, &agent_id, next, max))
                    .await??;
            match prepared {
                // Only if the files end before the durable end (changed behind our back):
                // pause instead of spinning.
                Prepared::Empty => tokio::time::sleep(Duration::from_millis(100)).await,
                Prepared::Skip {
                    next: skip_to,
                    corrupt_bytes,
                    dropped_samples,
                } => {
                    counter!(telemetry::BUFFER_CORRUPT_BYTES).increment(corrupt_bytes);
                    counter!(telemetry::SAMPLES_DROPPED, "reason" => DropReason::FrameTooLarge.as_str())
                        .increment(dropped_samples);
                    self.ack(skip_to).await?;
                    next = skip_to;
                }
                Prepared::Batch(batch) => {
                    if !self.deliver(&batch).await? {
                        return Ok(());
                    }
                    next = batch.end;
                }
            }
        }
    }

    /// Asks the current core how far it has applied this agent's batches. After a crash
    /// between the core's acknowledgement and our cursor update, the answer lies ahead of the
    /// cursor: what lies between is already stored and need not be sent again. Resending would
    /// be harmless (the core deduplicates), so any failure here just means "start at the
    /// cursor". Only an answer in this buffer's epoch, at or below its durable end, is used;
    /// it is a record boundary because sequences are batch end offsets.
    async fn resume_point(&mut self) -> Option<Offset> {
        let endpoint = self.settings.endpoints.get(self.current)?.clone();
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

    /// Waits until records beyond `next` are durable. `Some(true)` if it had to wait (the
    /// buffer was drained), `Some(false)` if a backlog was already there, `None` on stop.
    async fn wait_for_data(&mut self, next: Offset) -> Option<bool> {
        let mut waited = false;
        loop {
            if self.stopping() {
                return None;
            }
            self.progress.mark_unchanged();
            if self.reader.durable_end() > next {
                return Some(waited);
            }
            waited = true;
            tokio::select! {
                changed = self.progress.changed() => {
                    // The ingest thread is gone (shutdown or failure): nothing more will come.
                    if changed.is_err() { return None; }
                }
                _ = self.stop.changed() => {}
            }
        }
    }

    /// Gives a batch up to `batch_max_delay` to fill. False on stop.
    async fn linger(&mut self) -> bool {
        let deadline = Instant::now() + self.settings.batch_max_delay;
        let base = self.progress.borrow().samples;
        loop {
            let arrived = self.progress.borrow().samples.saturating_sub(base);
            if arrived >= self.settings.batch_max_samples as u64 {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                changed = self.progress.changed() => if changed.is_err() { return true },
                _ = self.stop.changed() => return !self.stopping(),
            }
        }
    }

    /// Sends `batch` until a core gives a final answer. False if stopped before that.
    async fn deliver(&mut self, batch: &Batch) -> Result<bool, UplinkError> {
        let mut attempt = 0u32;
        loop {
            let endpoint = self.settings.endpoints[self.current].clone();
            let Some(answer) = self.exchange(&endpoint, batch.frame.clone()).await else {
                return Ok(false);
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
                Ok(AckOutcome::Failed { code, message }) if !code.is_retryable() => {
                    error!(core = %endpoint, code = code.as_str(), %message, samples = batch.samples,
                        "core rejected a batch for good; dropping it");
                    self.count_dropped(DropReason::RejectedByCore, batch.samples);
                }
                Ok(AckOutcome::Failed { code, message }) => {
                    let e = AttemptError::Retryable {
                        code: code.as_str(),
                        message,
                    };
                    if !self.fail_over(&endpoint, &e, &mut attempt).await {
                        return Ok(false);
                    }
                    continue;
                }
                Err(e) => {
                    if !self.fail_over(&endpoint, &e, &mut attempt).await {
                        return Ok(false);
                    }
                    continue;
                }
            }
            if attempt > 0 {
                info!(core = %endpoint, attempts = attempt + 1, "batch delivered after retries");
            }
            self.ack(batch.end).await?;
            return Ok(true);
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

    /// Counts the failure, switches to the next endpoint and backs off. False on stop.
    async fn fail_over(
        &mut self,
        endpoint: &CoreEndpoint,
        e: &AttemptError,
        attempt: &mut u32,
    ) -> bool {
        counter!(telemetry::UPLINK_ERRORS, "endpoint" => endpoint.to_string()).increment(1);
        let delay = self.settings.backoff.delay(*attempt);
        *attempt = attempt.saturating_add(1);
        self.current = (self.current + 1) % self.settings.endpoints.len();
        warn!(core = %endpoint, error = %e, retry_in = ?delay,
            next_core = %self.settings.endpoints[self.current], "batch delivery failed");
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = stop_requested(&mut self.stop) => false,
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
    if epoch != batch.epoch.0 || sequence != batch.end.0 {
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

//! The ingest thread: drains the queue of MQTT messages (from the embedded listener and the
//! bridge), maps them to samples and appends them to the buffer with one fsync per burst
//! (group commit). Only after that fsync does it release the burst's [`AckTicket`]s, which send
//! the PUBACK (listener) or the manual acknowledgement (bridge).
//!
//! It runs on a dedicated OS thread because `LogWriter::sync` waits for the disk, which may not
//! happen on the async runtime.

use crate::buffer::record::{self, RecordError};
use crate::buffer::{LogError, LogReader, LogWriter, Offset};
use crate::mapping::{Mapped, MappedSample, Mapper, RejectReason, Rejection, SkipReason, Tally};
use crate::telemetry;
use bytes::Bytes;
use metrics::{Counter, counter, gauge};
use protocols::model::{Labels, Sample, Tenant};
use protocols::wire::SeriesSamples;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

/// How often an idle ingest thread checks for shutdown.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Most publishes in one burst: bounds how long a sample waits for its fsync under load.
const MAX_BURST_MESSAGES: usize = 4096;
/// Messages queued between the MQTT connections and the ingest thread. When it is full, the
/// connections stop reading their sockets (TCP back-pressure), so nothing is dropped.
pub(crate) const QUEUE_MESSAGES: usize = 2 * MAX_BURST_MESSAGES;

/// One MQTT message for the ingest thread.
pub(crate) struct Incoming {
    pub topic: Bytes,
    pub payload: Bytes,
    /// Released once the message's samples are fsynced (or the message was refused).
    pub ack: Option<AckTicket>,
}

/// What to do once a message is durable: send its PUBACK, or acknowledge it to the bridged
/// broker. Dropping a ticket without [`AckTicket::durable`] acknowledges nothing, so the
/// client resends.
pub(crate) struct AckTicket(Box<dyn FnOnce() + Send>);

impl AckTicket {
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Self(Box::new(f))
    }

    fn durable(self) {
        (self.0)();
    }
}
/// A record is closed once its encoding reaches about this size, so that one batch of records
/// stays far below the wire's frame limit.
const RECORD_SOFT_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Rejection warnings logged per window; the rest are only counted.
const WARNINGS_PER_WINDOW: u32 = 10;
const WARNING_WINDOW: Duration = Duration::from_secs(10);

/// What the ingest thread has made durable; the uplink waits on changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub durable_end: Offset,
    /// Samples made durable since start (the uplink uses it to decide when a batch is full).
    pub samples: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    #[error("buffer append failed: {0}")]
    Buffer(#[from] LogError),
    #[error("cannot encode buffer record: {0}")]
    Record(#[from] RecordError),
    #[error("the ingest thread panicked: {0}")]
    Panicked(String),
}

/// Test hook, honoured by debug builds only (the cross-process tests run those): the ingest
/// thread panics right after its N-th buffer append, before the fsync, as a bug or a failing
/// disk would, so that supervision can be tested end to end (`docs/edge-agent.md`).
pub(crate) const PANIC_AFTER_APPENDS_ENV: &str = "UPDRAFT_EDGE_TEST_PANIC_AFTER_APPENDS";

/// [`PANIC_AFTER_APPENDS_ENV`] when set to a number, in a debug build.
pub(crate) fn panic_after_appends_from_env() -> Option<u64> {
    if cfg!(debug_assertions) {
        std::env::var(PANIC_AFTER_APPENDS_ENV)
            .ok()?
            .trim()
            .parse()
            .ok()
    } else {
        None
    }
}

pub(crate) struct IngestSettings {
    pub mapper: Mapper,
    pub tenant: Tenant,
    /// Most samples per buffer record (= the batch limit, so one record always fits a batch).
    pub record_max_samples: usize,
    /// The buffer's byte bound and overflow policies.
    pub bound: crate::buffer::overflow::Bound,
    /// Shortest time between two fsyncs; messages arriving meanwhile join the next one.
    pub fsync_interval: Duration,
    /// Tests only: panic after this many appends (see [`PANIC_AFTER_APPENDS_ENV`]).
    pub panic_after_appends: Option<u64>,
}

/// Starts the ingest thread. It stops after one last drain and fsync once `stop` turns true
/// (or its sender is dropped), and reports how it ended on the returned channel, a panic
/// included ([`IngestError::Panicked`]).
pub(crate) fn spawn(
    queue: mpsc::Receiver<Incoming>,
    writer: LogWriter,
    reader: LogReader,
    settings: IngestSettings,
    progress: watch::Sender<Progress>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<oneshot::Receiver<Result<(), IngestError>>> {
    let (done_tx, done_rx) = oneshot::channel();
    let reject_counters =
        RejectReason::ALL.map(|r| counter!(telemetry::MESSAGES_REJECTED, "reason" => r.as_str()));
    let skip_counters =
        SkipReason::ALL.map(|r| counter!(telemetry::VALUES_SKIPPED, "reason" => r.as_str()));
    let mut ingest = Ingest {
        queue,
        runtime: tokio::runtime::Handle::current(),
        tickets: Vec::new(),
        writer,
        reader,
        settings,
        progress,
        stop,
        pending: HashMap::new(),
        pending_samples: 0,
        pending_bytes: 0,
        burst_samples: 0,
        appended: false,
        appends: 0,
        last_sync: Instant::now(),
        warnings: LogLimiter::new(WARNINGS_PER_WINDOW, WARNING_WINDOW),
        received: counter!(telemetry::MESSAGES_RECEIVED),
        samples_received: counter!(telemetry::SAMPLES_RECEIVED),
        samples_buffered: counter!(telemetry::SAMPLES_BUFFERED),
        rejected: reject_counters,
        skipped: skip_counters,
        seq_gaps: counter!(telemetry::SPARKPLUG_SEQ_GAPS),
    };
    std::thread::Builder::new()
        .name("updraft-ingest".to_owned())
        .spawn(move || {
            // A panic is reported like an error, with its message, so the agent can say why
            // it is going down. The state it leaves is only dropped: unsynced records were
            // never acknowledged, and the next start's recovery decides what is on disk.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ingest.run()))
                .unwrap_or_else(|payload| Err(IngestError::Panicked(panic_message(&*payload))));
            // Release the buffer (and its directory lock) before reporting that we are done.
            drop(ingest);
            // The receiver is gone only if the agent was abandoned; nothing left to tell.
            let _ = done_tx.send(result);
        })?;
    Ok(done_rx)
}

struct Ingest {
    queue: mpsc::Receiver<Incoming>,
    /// To wait on the queue with a timeout from this (non-runtime) thread.
    runtime: tokio::runtime::Handle,
    /// Acknowledgements of the current burst, released after its fsync.
    tickets: Vec<AckTicket>,
    writer: LogWriter,
    reader: LogReader,
    settings: IngestSettings,
    progress: watch::Sender<Progress>,
    stop: watch::Receiver<bool>,
    /// Samples mapped but not yet in a record, grouped by series.
    pending: HashMap<Labels, Vec<Sample>>,
    pending_samples: usize,
    pending_bytes: usize,
    /// Samples appended since the last fsync.
    burst_samples: u64,
    appended: bool,
    /// Records appended since start (for the test hook).
    appends: u64,
    /// When the last fsync finished (see [`IngestSettings::fsync_interval`]).
    last_sync: Instant,
    warnings: LogLimiter,
    received: Counter,
    samples_received: Counter,
    samples_buffered: Counter,
    rejected: [Counter; RejectReason::ALL.len()],
    skipped: [Counter; SkipReason::ALL.len()],
    seq_gaps: Counter,
}

impl Ingest {
    fn run(&mut self) -> Result<(), IngestError> {
        loop {
            // A dropped sender means the agent is gone: stop as well.
            let stopping = *self.stop.borrow() || self.stop.has_changed().is_err();
            let wait = if stopping { Duration::ZERO } else { IDLE_POLL };
            let mut drained = 0;
            if self.recv(Instant::now() + wait)? {
                drained += 1;
                // Take what else is already queued without blocking: one burst, one fsync.
                while drained < MAX_BURST_MESSAGES && self.recv(Instant::now())? {
                    drained += 1;
                }
                // With a minimum fsync interval, what arrives until it has passed joins this
                // burst's fsync (its acknowledgements wait for it like the others).
                let due = self.last_sync + self.settings.fsync_interval;
                while !stopping && drained < MAX_BURST_MESSAGES && self.recv(due)? {
                    drained += 1;
                }
            }
            self.commit()?;
            // In order: a connection's PUBACKs must follow its PUBLISH order.
            for ticket in self.tickets.drain(..) {
                ticket.durable();
            }
            if stopping {
                debug!("ingest thread stopped after a final drain");
                return Ok(());
            }
        }
    }

    /// Handles at most one message; false when none arrived before `deadline`.
    fn recv(&mut self, deadline: Instant) -> Result<bool, IngestError> {
        let message = match self.queue.try_recv() {
            Ok(m) => Some(m),
            Err(mpsc::error::TryRecvError::Disconnected) => {
                // Every producer is gone (the agent is stopping): wait for the stop signal.
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                None
            }
            Err(mpsc::error::TryRecvError::Empty) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    None
                } else {
                    let queue = &mut self.queue;
                    self.runtime
                        .block_on(async { tokio::time::timeout(wait, queue.recv()).await })
                        .ok()
                        .flatten()
                }
            }
        };
        let Some(Incoming {
            topic,
            payload,
            ack,
        }) = message
        else {
            return Ok(false);
        };
        self.on_publish(&topic, &payload)?;
        self.tickets.extend(ack);
        Ok(true)
    }

    fn on_publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), IngestError> {
        self.received.increment(1);
        match self.settings.mapper.map(topic, payload, now_ms()) {
            Ok(Mapped {
                samples,
                tally,
                overflow,
            }) => {
                self.tally(topic, &tally);
                self.samples_received.increment(samples.len() as u64);
                // Bytes of the record encoding, an upper bound (labels are shared per series).
                let bytes: usize = samples.iter().map(|s| 16 + label_bytes(&s.labels)).sum();
                let (pending, n) = (self.pending_bytes as u64, samples.len() as u64);
                let (writer, reader) = (&mut self.writer, &self.reader);
                if !self
                    .settings
                    .bound
                    .admit(overflow, n, bytes as u64, pending, writer, reader)?
                {
                    return Ok(());
                }
                for MappedSample { labels, sample } in samples {
                    self.push(labels, sample);
                }
                if self.pending_samples >= self.settings.record_max_samples
                    || self.pending_bytes >= RECORD_SOFT_MAX_BYTES
                {
                    self.append_record()?;
                }
            }
            Err(rejection) => self.reject(topic, &rejection),
        }
        Ok(())
    }

    fn push(&mut self, labels: Labels, sample: Sample) {
        let series = match self.pending.get_mut(&labels) {
            Some(series) => series,
            None => {
                self.pending_bytes += label_bytes(&labels);
                self.pending.entry(labels).or_default()
            }
        };
        series.push(sample);
        self.pending_samples += 1;
        self.pending_bytes += 16;
    }

    /// Counts what an accepted message left out; logs it (rate-limited) when it points at a
    /// problem: a bad line, or Sparkplug B aliases the agent has not learned.
    fn tally(&mut self, topic: &[u8], tally: &Tally) {
        for (counter, n) in self.skipped.iter().zip(tally.skipped) {
            if n > 0 {
                counter.increment(n);
            }
        }
        self.seq_gaps.increment(tally.seq_gaps);
        let unknown = tally.skipped[SkipReason::UnknownAlias as usize];
        let limited = tally.skipped[SkipReason::AliasLimit as usize];
        if (tally.note.is_some() || unknown > 0 || limited > 0) && self.warnings.allow() {
            let topic = String::from_utf8_lossy(&topic[..topic.len().min(256)]);
            warn!(
                %topic,
                unknown_alias = unknown,
                alias_limit = limited,
                invalid_line = tally.skipped[SkipReason::InvalidLine as usize],
                first_problem = tally.note.as_deref().unwrap_or(""),
                "skipped values of an MQTT message"
            );
        }
    }

    fn reject(&mut self, topic: &[u8], rejection: &Rejection) {
        let reason = rejection.reason();
        self.rejected[reason as usize].increment(1);
        if self.warnings.allow() {
            let topic = String::from_utf8_lossy(&topic[..topic.len().min(256)]);
            warn!(%topic, reason = reason.as_str(), "dropped MQTT message: {rejection}");
        }
    }

    /// Encodes the pending samples as one record and appends it (no fsync yet).
    fn append_record(&mut self) -> Result<(), IngestError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let series: Vec<SeriesSamples> = self
            .pending
            .drain()
            .map(|(labels, samples)| SeriesSamples { labels, samples })
            .collect();
        let payload = record::encode(&self.settings.tenant, &series)?;
        self.writer.append(&payload)?;
        self.appends += 1;
        if self
            .settings
            .panic_after_appends
            .is_some_and(|n| self.appends >= n)
        {
            panic!(
                "test hook {PANIC_AFTER_APPENDS_ENV}: panicking after buffer append {}",
                self.appends
            );
        }
        self.burst_samples += self.pending_samples as u64;
        self.pending_samples = 0;
        self.pending_bytes = 0;
        self.appended = true;
        Ok(())
    }

    /// Appends what is pending, fsyncs once, then tells the uplink.
    fn commit(&mut self) -> Result<(), IngestError> {
        self.append_record()?;
        if !self.appended {
            return Ok(());
        }
        let durable_end = self.writer.sync()?;
        self.last_sync = Instant::now();
        self.appended = false;
        let samples = std::mem::take(&mut self.burst_samples);
        self.samples_buffered.increment(samples);
        gauge!(telemetry::BUFFER_BYTES).set(self.reader.unacked_bytes() as f64);
        self.progress.send_modify(|p| {
            p.durable_end = durable_end;
            p.samples += samples;
        });
        Ok(())
    }
}

/// The text of a panic (`panic!` with a literal or with formatting), else a placeholder.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn label_bytes(labels: &Labels) -> usize {
    labels
        .iter()
        .map(|l| 4 + l.name.len() + l.value.len())
        .sum()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Lets `max` log lines through per window and reports how many were held back, so a flood of
/// bad messages cannot drown the log (or the disk it is written to).
struct LogLimiter {
    max: u32,
    window: Duration,
    window_start: Instant,
    emitted: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            window_start: Instant::now(),
            emitted: 0,
            suppressed: 0,
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= self.window {
            if self.suppressed > 0 {
                warn!(
                    suppressed = self.suppressed,
                    "more MQTT messages were dropped or cut than logged; see \
                     updraft_edge_messages_rejected_total and updraft_edge_values_skipped_total"
                );
            }
            self.window_start = now;
            self.emitted = 0;
            self.suppressed = 0;
        }
        if self.emitted < self.max {
            self.emitted += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Rule;
    use std::sync::{Arc, Mutex};

    /// An ingest thread over a fresh buffer in `dir`, with the default mapping rule: its
    /// queue, its stop switch and what it reports when it ends.
    fn start(
        dir: &std::path::Path,
        fsync_interval: Duration,
        panic_after_appends: Option<u64>,
    ) -> (
        mpsc::Sender<Incoming>,
        watch::Sender<bool>,
        oneshot::Receiver<Result<(), IngestError>>,
    ) {
        let (writer, reader, _) = crate::buffer::open(
            dir,
            crate::buffer::LogOptions {
                segment_max_bytes: 1 << 20,
            },
        )
        .expect("open");
        let (queue_tx, queue_rx) = mpsc::channel(16);
        let (progress_tx, _progress_rx) = watch::channel(Progress {
            durable_end: reader.acked(),
            samples: 0,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let done = spawn(
            queue_rx,
            writer,
            reader,
            IngestSettings {
                mapper: Mapper::new(vec![Rule::default()], 65_536),
                tenant: Tenant::default(),
                record_max_samples: 10_000,
                bound: crate::buffer::overflow::Bound::new(u64::MAX),
                fsync_interval,
                panic_after_appends,
            },
            progress_tx,
            stop_rx,
        )
        .expect("spawn");
        (queue_tx, stop_tx, done)
    }

    /// With a minimum fsync interval, a message that arrives while the interval runs shares
    /// the fsync of the one before it: the first acknowledgement waits for the second message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_within_the_fsync_interval_share_one_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (queue_tx, stop_tx, done) = start(dir.path(), Duration::from_millis(600), None);
        let acks: Arc<Mutex<Vec<(&str, Instant)>>> = Arc::default();
        let send = |name: &'static str| {
            let acks = acks.clone();
            Incoming {
                topic: Bytes::from_static(b"site1/dev1/temp"),
                payload: Bytes::from_static(b"21.5"),
                ack: Some(AckTicket::new(move || {
                    acks.lock().expect("lock").push((name, Instant::now()));
                })),
            }
        };
        queue_tx.send(send("first")).await.expect("queued");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second_sent = Instant::now();
        queue_tx.send(send("second")).await.expect("queued");
        let deadline = Instant::now() + Duration::from_secs(30);
        while acks.lock().expect("lock").len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let acks = acks.lock().expect("lock").clone();
        assert_eq!(
            acks.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert!(
            acks[0].1 > second_sent,
            "the first message was acknowledged before the second arrived: no shared fsync"
        );
        stop_tx.send(true).expect("stop");
        done.await.expect("ingest ended").expect("ingest ok");
    }

    /// A panic in the ingest thread comes back as an error with its message, and the message
    /// it was appending is not acknowledged (it was never fsynced).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_reported_with_its_message_and_acknowledges_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (queue_tx, _stop_tx, done) = start(dir.path(), Duration::ZERO, Some(1));
        let acked = Arc::new(Mutex::new(false));
        let flag = acked.clone();
        queue_tx
            .send(Incoming {
                topic: Bytes::from_static(b"site1/dev1/temp"),
                payload: Bytes::from_static(b"21.5"),
                ack: Some(AckTicket::new(move || *flag.lock().expect("lock") = true)),
            })
            .await
            .expect("queued");
        let ended = tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .expect("the ingest thread ends")
            .expect("it reports how");
        match ended {
            Err(IngestError::Panicked(message)) => {
                assert!(message.contains("after buffer append 1"), "{message}");
            }
            other => panic!("expected a reported panic, got {other:?}"),
        }
        assert!(
            !*acked.lock().expect("lock"),
            "an unsynced message was acknowledged"
        );
    }

    #[test]
    fn log_limiter_caps_lines_per_window() {
        let mut l = LogLimiter::new(3, Duration::from_secs(3600));
        let allowed = (0..10).filter(|_| l.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(l.suppressed, 7);
        let mut l = LogLimiter::new(1, Duration::ZERO);
        assert!(
            l.allow() && l.allow(),
            "a new window lets lines through again"
        );
    }
}

//! What bounds the memory QUIC ingest may use, whatever the peers send.
//!
//! Three layers, each a setting ([`QuicLimits`]):
//!
//! 1. **Connections.** At most `max_connections` at once (handshakes included); the next one
//!    is refused before its handshake (`updraft_core_quic_refusals_total{reason="connection_limit"}`,
//!    a warning at most every [`LOG_EVERY`]). An agent retries with its backoff.
//! 2. **Flow control.** Per connection at most `max_streams_per_connection` bidirectional
//!    streams (no unidirectional ones), a stream may have `stream_receive_window` bytes and a
//!    connection `receive_window` bytes in flight that the node has not read. quinn enforces
//!    these windows on the peer, so data the node does not read stays on the sender.
//! 3. **In-flight bytes.** The node reads a frame only against a node-wide [`ByteBudget`] of
//!    `inflight_bytes`, taken [`GRANT_BYTES`] at a time before reading and given back when the
//!    frame's answer is sent (for a batch: after storage made it durable). A stream that
//!    cannot get budget stops reading (flow control then holds its sender back) and, after
//!    [`BUDGET_WAIT`] of waiting in total, is answered `too_many_requests` (retryable: an
//!    agent keeps the batch and sends it again later) and counted in
//!    `updraft_core_quic_refusals_total{reason="memory_budget"}`. The waits also resolve
//!    streams that each hold part of a frame while the budget is gone: the longest waiter
//!    gives up first and frees its share for the others.
//!
//! So what peers can make the node hold is at most
//! `max_connections × receive_window + inflight_bytes`, plus one decoded copy of each frame
//! being applied (docs/security.md, "Limits that protect the QUIC listener").

use protocols::wire::MAX_FRAME_BYTES;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How much budget a stream takes before each read: small enough that a small batch does not
/// tie up much, large enough that a big frame needs few semaphore round trips.
pub const GRANT_BYTES: usize = 64 * 1024;
/// How long in total a stream may wait for budget before it is answered `too_many_requests`;
/// below the agent's 15 s exchange timeout, so the agent hears why.
pub const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// At most one warning per this interval for each kind of refusal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Gauge: bytes of frames read and not yet answered.
pub const INFLIGHT_BYTES: &str = "updraft_core_quic_inflight_bytes";
/// Counter by `reason`: connections and streams turned away by these limits.
pub const REFUSALS: &str = "updraft_core_quic_refusals_total";

/// The QUIC listener's limits (flags `--quic-*`, see `deploy/core-node.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicLimits {
    /// Connections open at once, handshakes included.
    pub max_connections: usize,
    /// Bidirectional streams (batches in flight) one connection may have open.
    pub max_streams_per_connection: u32,
    /// Bytes the peer may send on one stream beyond what the node has read.
    pub stream_receive_window: u32,
    /// Bytes the peer may send on one connection beyond what the node has read.
    pub receive_window: u32,
    /// Bytes of frames the node holds at once, node-wide, from reading until answering.
    pub inflight_bytes: usize,
}

impl Default for QuicLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_streams_per_connection: 16,
            stream_receive_window: 256 * 1024,
            receive_window: 256 * 1024,
            inflight_bytes: 128 * 1024 * 1024,
        }
    }
}

impl QuicLimits {
    /// Rejects settings the listener cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("quic_max_connections must be at least 1".into());
        }
        if self.max_streams_per_connection == 0 {
            return Err("quic_max_streams_per_connection must be at least 1".into());
        }
        // Below a packet's worth a peer could barely send anything.
        const MIN_WINDOW: u32 = 16 * 1024;
        if self.stream_receive_window < MIN_WINDOW || self.receive_window < MIN_WINDOW {
            return Err(format!(
                "quic_stream_receive_window and quic_receive_window must be at least {MIN_WINDOW} bytes"
            ));
        }
        // A frame is held whole before it is decoded: a smaller budget could never take a
        // maximum-size batch.
        if self.inflight_bytes < MAX_FRAME_BYTES {
            return Err(format!(
                "quic_inflight_bytes must be at least {MAX_FRAME_BYTES} (one maximum-size frame)"
            ));
        }
        Ok(())
    }

    /// quinn's per-connection limits for the server configuration.
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_streams_per_connection))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .stream_receive_window(quinn::VarInt::from_u32(self.stream_receive_window))
            .receive_window(quinn::VarInt::from_u32(self.receive_window))
            // The node only sends small acknowledgements.
            .send_window(u64::from(self.stream_receive_window.min(1024 * 1024)));
        t
    }
}

/// The node-wide in-flight byte budget (see the module docs).
#[derive(Debug, Clone)]
pub struct ByteBudget {
    sem: Arc<Semaphore>,
    /// How long one stream may wait in total: [`BUDGET_WAIT`] but in tests.
    wait: Duration,
}

/// Budget held by one frame; given back (and the gauge lowered) when dropped.
#[derive(Debug, Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    pub fn bytes(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn add(&mut self, more: OwnedSemaphorePermit) {
        metrics::gauge!(INFLIGHT_BYTES).increment(more.num_permits() as f64);
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
    }

    /// Gives back all but `keep` bytes.
    pub fn shrink_to(&mut self, keep: usize) {
        let Some(p) = &mut self.permit else { return };
        let extra = p.num_permits().saturating_sub(keep);
        if extra > 0
            && let Some(back) = p.split(extra)
        {
            metrics::gauge!(INFLIGHT_BYTES).decrement(back.num_permits() as f64);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            metrics::gauge!(INFLIGHT_BYTES).decrement(p.num_permits() as f64);
        }
    }
}

/// Why no budget came.
#[derive(Debug, PartialEq, Eq)]
pub enum BudgetError {
    /// The stream has waited [`BUDGET_WAIT`] in total.
    Exhausted,
    /// The budget was closed (the node is stopping).
    Closed,
}

impl ByteBudget {
    pub fn new(bytes: usize) -> Self {
        metrics::gauge!(INFLIGHT_BYTES).set(0.0);
        Self {
            sem: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            wait: BUDGET_WAIT,
        }
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Adds `bytes` to `held`, waiting while the budget is short; `waited` accumulates the
    /// stream's waiting time and is held to [`BUDGET_WAIT`] in total.
    pub async fn grow(
        &self,
        held: &mut Held,
        bytes: usize,
        waited: &mut Duration,
    ) -> Result<(), BudgetError> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        match Arc::clone(&self.sem).try_acquire_many_owned(n) {
            Ok(p) => {
                held.add(p);
                return Ok(());
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(BudgetError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let left = self.wait.saturating_sub(*waited);
        let start = Instant::now();
        let got = tokio::time::timeout(left, Arc::clone(&self.sem).acquire_many_owned(n)).await;
        *waited += start.elapsed();
        match got {
            Ok(Ok(p)) => {
                held.add(p);
                Ok(())
            }
            Ok(Err(_)) => Err(BudgetError::Closed),
            Err(_) => Err(BudgetError::Exhausted),
        }
    }
}

/// Connections open now, against `max_connections`.
#[derive(Debug)]
pub struct ConnectionSlots {
    open: AtomicUsize,
    max: usize,
}

/// One open connection's slot; freed when dropped.
#[derive(Debug)]
pub struct Slot(Arc<ConnectionSlots>);

impl ConnectionSlots {
    pub fn new(max: usize) -> Arc<Self> {
        metrics::gauge!("updraft_core_quic_connections").set(0.0);
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// A slot, or `None` when `max` connections are open.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("updraft_core_quic_connections").increment(1);
        Some(Slot(Arc::clone(self)))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("updraft_core_quic_connections").decrement(1);
    }
}

/// Lets one log line through per [`LOG_EVERY`] and counts the ones held back.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Milliseconds since `epoch` of the last line let through, plus one (0: never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl LogLimiter {
    /// `Some(n)`: log now, mentioning the `n` events not logged since the last line.
    pub fn allow(&self) -> Option<u64> {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Acquire);
        let every = LOG_EVERY.as_millis() as u64;
        if last != 0 && now < last + every
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_a_budget_below_one_frame_is_not() {
        QuicLimits::default().validate().expect("defaults");
        let small = QuicLimits {
            inflight_bytes: MAX_FRAME_BYTES - 1,
            ..QuicLimits::default()
        };
        assert!(small.validate().is_err());
        let none = QuicLimits {
            max_connections: 0,
            ..QuicLimits::default()
        };
        assert!(none.validate().is_err());
    }

    #[test]
    fn connection_slots_stop_at_the_maximum_and_come_back() {
        let slots = ConnectionSlots::new(2);
        let a = slots.take().expect("first");
        let _b = slots.take().expect("second");
        assert!(slots.take().is_none());
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.take().is_some());
    }

    #[tokio::test]
    async fn a_stream_waits_for_budget_then_gives_up_and_held_bytes_come_back() {
        let mut budget = ByteBudget::new(100);
        budget.wait = Duration::from_millis(200);
        let mut first = Held::default();
        let mut waited = Duration::ZERO;
        budget
            .grow(&mut first, 80, &mut waited)
            .await
            .expect("free");
        first.shrink_to(30);
        assert_eq!((first.bytes(), budget.available()), (30, 70));

        let mut second = Held::default();
        let mut waited = Duration::ZERO;
        assert_eq!(
            budget.grow(&mut second, 80, &mut waited).await,
            Err(BudgetError::Exhausted)
        );
        assert!(waited >= budget.wait);
        drop(first);
        assert_eq!(budget.available(), 100);
        // The wait allowance is spent: even a free budget is not waited for again, but one
        // that is free right away is still taken.
        budget
            .grow(&mut second, 80, &mut waited)
            .await
            .expect("free");
        assert_eq!(second.bytes(), 80);
    }

    #[test]
    fn the_log_limiter_lets_one_line_through_per_interval() {
        let l = LogLimiter::default();
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
    }
}

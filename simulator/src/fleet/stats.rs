//! The fleet's counters, the progress line and the summary table.

use super::plan::{AnomalyKinds, PlanCounts};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Counters of the publishes of one QoS level.
pub struct QosCounters {
    /// Publishes handed to the MQTT client.
    pub requested: AtomicU64,
    /// Publishes written to the connection, and their samples.
    pub sent: AtomicU64,
    pub sent_samples: AtomicU64,
    /// Done: written (QoS 0), PUBACK (QoS 1), PUBCOMP (QoS 2); and their samples.
    pub acked: AtomicU64,
    pub acked_samples: AtomicU64,
    /// Refused by the broker, lost with a connection, or unacknowledged at the end.
    pub failed: AtomicU64,
    /// Write → ack, in microseconds (QoS 1 and 2).
    latency_us: Mutex<Option<Histogram<u64>>>,
}

impl Default for QosCounters {
    fn default() -> Self {
        Self {
            requested: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            sent_samples: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_samples: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            // 1 µs .. 1 h at 3 significant digits; `new_with_bounds` only fails on bad bounds.
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).ok()),
        }
    }
}

impl QosCounters {
    pub fn record_latency(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let mut h = self
            .latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = h.as_mut() {
            let _ = h.record(us);
        }
    }

    /// (p50, p99) in milliseconds, if any ack was timed.
    pub fn latency_ms(&self) -> Option<(f64, f64)> {
        let h = self
            .latency_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let h = h.as_ref()?;
        (!h.is_empty()).then(|| {
            (
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
            )
        })
    }
}

/// Everything the fleet counts while it runs.
#[derive(Default)]
pub struct FleetCounters {
    per_qos: [QosCounters; 3],
    pub connection_errors: AtomicU64,
    /// Connections currently up.
    pub connected: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl FleetCounters {
    pub fn qos(&self, qos: u8) -> &QosCounters {
        &self.per_qos[usize::from(qos.min(2))]
    }

    pub fn set_last_error(&self, e: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn total(&self, f: impl Fn(&QosCounters) -> u64) -> u64 {
        self.per_qos.iter().map(f).sum()
    }

    /// The one-line progress message.
    pub fn progress(&self, elapsed: Duration, connections: usize) -> String {
        let sent = self.total(|q| q.sent.load(Ordering::Relaxed));
        let acked = self.total(|q| q.acked.load(Ordering::Relaxed));
        let failed = self.total(|q| q.failed.load(Ordering::Relaxed));
        let rate = sent as f64 / elapsed.as_secs_f64().max(1e-3);
        format!(
            "sent {sent} ({rate:.0}/s), acknowledged {acked}, failed {failed}, connections up {}/{connections}, connection errors {}",
            self.connected.load(Ordering::Relaxed),
            self.connection_errors.load(Ordering::Relaxed),
        )
    }
}

/// The end-of-run report: the counters frozen, with what the plan did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub dataset: String,
    pub devices: u64,
    pub seed: u64,
    pub start_ms: i64,
    pub connections: usize,
    pub mqtt_version: String,
    pub elapsed_s: f64,
    pub per_qos: Vec<QosSummary>,
    pub sent: u64,
    pub sent_samples: u64,
    pub acknowledged: u64,
    pub acknowledged_samples: u64,
    pub failed: u64,
    pub connection_errors: u64,
    pub last_error: Option<String>,
    pub anomalies: std::collections::BTreeMap<String, u64>,
    pub silenced_ticks: u64,
    pub offline_dropped_ticks: u64,
    pub offline_backlogged_ticks: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QosSummary {
    pub qos: u8,
    pub sent: u64,
    pub sent_samples: u64,
    pub acknowledged: u64,
    pub acknowledged_samples: u64,
    pub failed: u64,
    pub rate_per_s: f64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
}

pub struct RunInfo {
    pub dataset: String,
    pub devices: u64,
    pub seed: u64,
    pub start_ms: i64,
    pub connections: usize,
    pub mqtt_version: String,
    /// QoS levels in use.
    pub qos_levels: Vec<u8>,
}

impl Summary {
    pub fn new(
        info: RunInfo,
        counters: &FleetCounters,
        plan: &PlanCounts,
        elapsed: Duration,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let per_qos: Vec<QosSummary> = info
            .qos_levels
            .iter()
            .map(|&qos| {
                let q = counters.qos(qos);
                let sent = q.sent.load(Ordering::Relaxed);
                let latency = q.latency_ms();
                QosSummary {
                    qos,
                    sent,
                    sent_samples: q.sent_samples.load(Ordering::Relaxed),
                    acknowledged: q.acked.load(Ordering::Relaxed),
                    acknowledged_samples: q.acked_samples.load(Ordering::Relaxed),
                    failed: q.failed.load(Ordering::Relaxed),
                    rate_per_s: sent as f64 / secs,
                    ack_p50_ms: latency.map(|l| l.0),
                    ack_p99_ms: latency.map(|l| l.1),
                }
            })
            .collect();
        let sum = |f: fn(&QosSummary) -> u64| per_qos.iter().map(f).sum::<u64>();
        Self {
            dataset: info.dataset,
            devices: info.devices,
            seed: info.seed,
            start_ms: info.start_ms,
            connections: info.connections,
            mqtt_version: info.mqtt_version,
            elapsed_s: elapsed.as_secs_f64(),
            sent: sum(|q| q.sent),
            sent_samples: sum(|q| q.sent_samples),
            acknowledged: sum(|q| q.acknowledged),
            acknowledged_samples: sum(|q| q.acknowledged_samples),
            failed: sum(|q| q.failed),
            per_qos,
            connection_errors: counters.connection_errors.load(Ordering::Relaxed),
            last_error: counters.last_error(),
            anomalies: AnomalyKinds::NAMES
                .iter()
                .zip(plan.anomalies)
                .map(|(n, c)| ((*n).to_owned(), c))
                .collect(),
            silenced_ticks: plan.silenced_ticks,
            offline_dropped_ticks: plan.offline_dropped_ticks,
            offline_backlogged_ticks: plan.offline_backlogged_ticks,
        }
    }

    /// A markdown table with a header line and notes.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fleet: {} {} devices, seed {}, start {} (ms), {} connection(s), {}, {:.1} s",
            self.devices,
            self.dataset,
            self.seed,
            self.start_ms,
            self.connections,
            self.mqtt_version,
            self.elapsed_s
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| qos | sent | acknowledged | failed | samples sent | samples acknowledged | msgs/s | ack p50 ms | ack p99 ms |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        for q in &self.per_qos {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
                q.qos,
                q.sent,
                q.acknowledged,
                q.failed,
                q.sent_samples,
                q.acknowledged_samples,
                q.rate_per_s,
                ms(q.ack_p50_ms),
                ms(q.ack_p99_ms)
            );
        }
        if self.per_qos.len() > 1 {
            let _ = writeln!(
                s,
                "| all | {} | {} | {} | {} | {} | {:.0} | | |",
                self.sent,
                self.acknowledged,
                self.failed,
                self.sent_samples,
                self.acknowledged_samples,
                self.sent as f64 / self.elapsed_s.max(1e-3)
            );
        }
        let _ = writeln!(s);
        let _ = write!(
            s,
            "QoS 0 counts as acknowledged when written. Connection errors: {}",
            self.connection_errors
        );
        if let Some(e) = &self.last_error {
            let _ = write!(s, " (last: {e})");
        }
        let _ = writeln!(s, ".");
        let anomalies: Vec<String> = self
            .anomalies
            .iter()
            .filter(|(_, c)| **c > 0)
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        if !anomalies.is_empty() || self.silenced_ticks > 0 {
            let _ = writeln!(
                s,
                "Anomaly episodes: {}; ticks silenced: {}.",
                anomalies.join(", "),
                self.silenced_ticks
            );
        }
        if self.offline_dropped_ticks + self.offline_backlogged_ticks > 0 {
            let _ = writeln!(
                s,
                "Offline: {} ticks dropped, {} held and published on reconnect.",
                self.offline_dropped_ticks, self.offline_backlogged_ticks
            );
        }
        s
    }
}

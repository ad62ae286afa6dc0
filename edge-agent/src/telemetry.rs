//! Metric names and descriptions.
//!
//! The names are part of the agent's interface: dashboards and the cross-process tests read them
//! from `GET /metrics`, so renaming one is a breaking change. Counters whose label values are
//! known up front (rejection and skip reasons, drop reasons, core endpoints) are registered at zero on
//! start, so a scrape shows every series before the first event.

use crate::config::CoreEndpoint;
use crate::mapping::{RejectReason, SkipReason};
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

pub(crate) const MESSAGES_RECEIVED: &str = "updraft_edge_messages_received_total";
pub(crate) const MESSAGES_REJECTED: &str = "updraft_edge_messages_rejected_total";
pub(crate) const VALUES_SKIPPED: &str = "updraft_edge_values_skipped_total";
pub(crate) const SPARKPLUG_SEQ_GAPS: &str = "updraft_edge_sparkplug_seq_gaps_total";
pub(crate) const SAMPLES_RECEIVED: &str = "updraft_edge_samples_received_total";
pub(crate) const SAMPLES_BUFFERED: &str = "updraft_edge_samples_buffered_total";
pub(crate) const BUFFER_BYTES: &str = "updraft_edge_buffer_bytes";
pub(crate) const BUFFER_CORRUPT_BYTES: &str = "updraft_edge_buffer_corrupt_bytes_total";
pub(crate) const BUFFER_HEALTHY: &str = "updraft_edge_buffer_healthy";
pub(crate) const SAMPLES_SHIPPED: &str = "updraft_edge_samples_shipped_total";
pub(crate) const SAMPLES_ACKED: &str = "updraft_edge_samples_acked_total";
pub(crate) const SAMPLES_DROPPED: &str = "updraft_edge_samples_dropped_total";
pub(crate) const UPLINK_ERRORS: &str = "updraft_edge_uplink_errors_total";
pub(crate) const UPLINK_RTT: &str = "updraft_edge_uplink_rtt_seconds";
pub(crate) const UPLINK_ACTIVE: &str = "updraft_edge_uplink_active";
pub(crate) const MQTT_AUTH_FAILURES: &str = "updraft_edge_mqtt_auth_failures_total";
pub(crate) const MQTT_ACL_DENIED: &str = "updraft_edge_mqtt_acl_denied_total";
pub(crate) const MQTT_THROTTLED: &str = "updraft_edge_mqtt_throttled_total";
pub(crate) const MQTT_AUTH_FILE_RELOADS: &str = "updraft_edge_mqtt_auth_file_reloads_total";
pub(crate) const UPLINK_BACKLOG_BYTES: &str = "updraft_edge_uplink_backlog_bytes";
pub(crate) const OLDEST_UNSENT_AGE: &str = "updraft_edge_oldest_unsent_sample_age_seconds";
pub(crate) const BUFFER_MAX_BYTES: &str = "updraft_edge_buffer_max_bytes";
pub(crate) const BRIDGE_REDELIVERED: &str = "updraft_edge_bridge_redelivered_total";
pub(crate) const BRIDGE_ERRORS: &str = "updraft_edge_bridge_connection_errors_total";

/// Why shipped samples were given up on. Label values of [`SAMPLES_DROPPED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The core answered with a non-retryable error, or stored only part of a batch.
    RejectedByCore,
    /// A single buffered record encodes to a frame larger than the wire allows.
    FrameTooLarge,
    /// The buffer was full and the message's rule says `reject_new` (or nothing could be
    /// evicted): the new samples were not buffered.
    BufferFullRejectNew,
    /// The buffer was full and a `drop_oldest` rule's message evicted the oldest segment.
    BufferFullDropOldest,
    /// The buffer was full and a `downsample_backlog` rule's message replaced the oldest
    /// segment's raw samples by per-minute aggregates.
    BufferFullDownsample,
}

impl DropReason {
    pub(crate) const ALL: [Self; 5] = [
        Self::RejectedByCore,
        Self::FrameTooLarge,
        Self::BufferFullRejectNew,
        Self::BufferFullDropOldest,
        Self::BufferFullDownsample,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::RejectedByCore => "rejected_by_core",
            Self::FrameTooLarge => "frame_too_large",
            Self::BufferFullRejectNew => "buffer_full_reject_new",
            Self::BufferFullDropOldest => "buffer_full_drop_oldest",
            Self::BufferFullDownsample => "buffer_full_downsample",
        }
    }
}

/// Registers descriptions and zero-valued label sets. Harmless to call more than once.
pub(crate) fn register(endpoints: &[CoreEndpoint]) {
    describe_counter!(
        MQTT_AUTH_FAILURES,
        "MQTT CONNECTs refused for an unknown username or a wrong password"
    );
    describe_counter!(
        BRIDGE_REDELIVERED,
        "messages the bridged broker delivered again (DUP flag): sent before but not acknowledged"
    );
    describe_counter!(
        BRIDGE_ERRORS,
        "bridge connection failures (each is followed by a reconnect attempt)"
    );
    describe_counter!(
        MQTT_ACL_DENIED,
        "MQTT publishes dropped because the --mqtt-acl-file does not allow their topic"
    );
    counter!(MQTT_AUTH_FAILURES).absolute(0);
    counter!(MQTT_ACL_DENIED).absolute(0);
    // Its label sets are registered at zero by `reload` for the files that are configured.
    describe_counter!(
        MQTT_AUTH_FILE_RELOADS,
        "re-reads of --mqtt-users-file (file=\"users\") and --mqtt-acl-file (file=\"acl\") \
         while running, by result: ok (in service) or failed (the previous version kept)"
    );
    describe_counter!(
        MQTT_THROTTLED,
        "MQTT publishes held back because their connection was over --mqtt-max-publish-rate \
         (delayed, never dropped)"
    );
    counter!(MQTT_THROTTLED).absolute(0);
    counter!(BRIDGE_REDELIVERED).absolute(0);
    counter!(BRIDGE_ERRORS).absolute(0);
    describe_counter!(
        MESSAGES_RECEIVED,
        "MQTT publishes received from the embedded broker"
    );
    describe_counter!(
        MESSAGES_REJECTED,
        "MQTT publishes dropped because topic or payload could not be mapped, by reason"
    );
    describe_counter!(
        VALUES_SKIPPED,
        "values left out of accepted publishes (the rest of the publish is kept), by reason"
    );
    describe_counter!(
        SPARKPLUG_SEQ_GAPS,
        "Sparkplug B messages whose seq did not follow their edge node's previous message"
    );
    describe_counter!(SAMPLES_RECEIVED, "samples decoded from accepted publishes");
    describe_counter!(
        SAMPLES_BUFFERED,
        "samples appended and fsynced to the disk buffer"
    );
    describe_gauge!(
        BUFFER_BYTES,
        Unit::Bytes,
        "bytes in the disk buffer not yet acknowledged by a core"
    );
    describe_gauge!(
        BUFFER_HEALTHY,
        "1 while the buffer takes writes; 0 once its ingest thread failed (a failed append or \
         fsync, or a panic): /health answers 503 and the agent exits after \
         --buffer-failure-exit-delay-ms"
    );
    describe_counter!(
        BUFFER_CORRUPT_BYTES,
        Unit::Bytes,
        "buffer bytes discarded as torn or corrupt (recovery truncation and read-time skips)"
    );
    describe_counter!(
        SAMPLES_SHIPPED,
        "samples in batches a core answered (any outcome), counted per delivery (resends included)"
    );
    describe_counter!(
        SAMPLES_ACKED,
        "samples a core acknowledged as stored or duplicate"
    );
    describe_counter!(
        SAMPLES_DROPPED,
        "samples given up on after buffering, by reason"
    );
    describe_counter!(UPLINK_ERRORS, "failed batch deliveries, by core endpoint");
    describe_gauge!(
        UPLINK_RTT,
        Unit::Seconds,
        "smoothed round-trip time of the QUIC connection to each core endpoint; NaN while none is up"
    );
    describe_gauge!(
        UPLINK_ACTIVE,
        "1 for the core endpoint batches are sent to, 0 for the others"
    );
    describe_gauge!(
        UPLINK_BACKLOG_BYTES,
        Unit::Bytes,
        "buffer bytes waiting in the backlog lane after an outage (fresh data goes first)"
    );
    describe_gauge!(
        OLDEST_UNSENT_AGE,
        Unit::Seconds,
        "age (by its timestamp) of the oldest sample not yet acknowledged by a core; 0 when none"
    );
    describe_gauge!(
        BUFFER_MAX_BYTES,
        Unit::Bytes,
        "bound of the buffer's unacknowledged bytes (--buffer-max-bytes)"
    );

    counter!(MESSAGES_RECEIVED).absolute(0);
    for reason in RejectReason::ALL {
        counter!(MESSAGES_REJECTED, "reason" => reason.as_str()).absolute(0);
    }
    for reason in SkipReason::ALL {
        counter!(VALUES_SKIPPED, "reason" => reason.as_str()).absolute(0);
    }
    counter!(SPARKPLUG_SEQ_GAPS).absolute(0);
    counter!(SAMPLES_RECEIVED).absolute(0);
    counter!(SAMPLES_BUFFERED).absolute(0);
    counter!(BUFFER_CORRUPT_BYTES).absolute(0);
    counter!(SAMPLES_SHIPPED).absolute(0);
    counter!(SAMPLES_ACKED).absolute(0);
    for reason in DropReason::ALL {
        counter!(SAMPLES_DROPPED, "reason" => reason.as_str()).absolute(0);
    }
    for (i, endpoint) in endpoints.iter().enumerate() {
        counter!(UPLINK_ERRORS, "endpoint" => endpoint.to_string()).absolute(0);
        gauge!(UPLINK_RTT, "endpoint" => endpoint.to_string()).set(f64::NAN);
        gauge!(UPLINK_ACTIVE, "endpoint" => endpoint.to_string()).set(if i == 0 {
            1.0
        } else {
            0.0
        });
    }
    gauge!(UPLINK_BACKLOG_BYTES).set(0.0);
    gauge!(OLDEST_UNSENT_AGE).set(0.0);
    gauge!(BUFFER_BYTES).set(0.0);
}

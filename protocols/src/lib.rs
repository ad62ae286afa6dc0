//! Updraft's shared vocabulary: what edge agents and core nodes both need to agree on.
//!
//! - [`model`]: tenants, metric names and label sets (Prometheus naming rules enforced), series
//!   identity, samples.
//! - [`codec`]: the chunk format for one series' samples (decimal-aware values, grid or
//!   delta-of-delta timestamps, Gorilla XOR fallback), and the Prometheus XOR baseline.
//! - [`line_protocol`]: InfluxDB line protocol lines (parse and write), for the core's
//!   `/write` endpoints and the edge agent's MQTT payloads.
//! - [`remote_write`]: Prometheus remote_write 1.0 requests (protobuf and snappy), decoded by
//!   the core's `/api/v1/write` and encoded by tests and the simulator.
//! - [`wire`]: the messages an edge agent and a core node exchange over QUIC, each framed with a
//!   version byte.
//!
//! This crate does no I/O (encoding and decoding only), starts no runtime and depends on no other workspace crate, so both
//! sides (and tests, fuzzers and benchmarks) can use it without pulling in a network stack.

pub mod codec;
pub mod line_protocol;
pub mod model;
pub mod remote_write;
pub mod wire;

pub use model::{Label, Labels, ModelError, Sample, SeriesId, ShardId, Tenant};

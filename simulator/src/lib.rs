//! Updraft's device simulator, demo launcher and benchmark suite.
//!
//! - [`fleet`]: simulated devices publishing over MQTT, deterministic from a seed.
//! - [`demo`]: a whole local deployment in one process: core node, edge agent and a fleet.
//! - [`datasets`]: the reference datasets of DATASETS.md (`iot-trucks`, `sensor-mix`,
//!   `metrics-mix`), generated deterministically, and their exporters.
//! - [`bench`]: the benchmark scenarios (`simulator bench <scenario>`), each printing a table
//!   and, with `--json`, one JSON line per figure.
//!
//! It depends on `core-node` and `edge-agent` as libraries so that `cargo run -p simulator --
//! demo` works from a fresh clone without building or locating other binaries.

pub mod bench;
pub mod datasets;
pub mod demo;
pub mod fleet;

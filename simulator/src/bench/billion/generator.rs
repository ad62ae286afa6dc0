//! The generator thread of `bench billion`: the fleet in timestamp order, cut into batches.
//!
//! The fleet advances in windows of `chunk_ticks` ticks. In each window every truck's ticks
//! before the window's end become one chunk per series (a tick just past the end waits in the
//! truck's `carry` for the next window, so windows never overlap and no tick is lost), and
//! `trucks_per_batch` trucks make one `WriteBatch`, encoded as a frame for the next agent in
//! turn (round robin; each agent's sequences count up from 1).

use super::probe::thread_cpu;
use super::{EPOCH, TICK_MS};
use crate::datasets::{DatasetSpec, Entity};
use anyhow::bail;
use protocols::wire::{AgentId, MAX_FRAME_BYTES, Message, SeriesChunk, WriteBatch};
use protocols::{Sample, Tenant};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One encoded `WriteBatch` for one agent.
pub(super) struct Frame {
    pub sequence: u64,
    pub samples: u64,
    pub bytes: Vec<u8>,
}

/// A truck's random stream and the first tick of its next window.
pub(super) struct Truck {
    entity: Box<dyn Entity>,
    carry: Option<(i64, Vec<f64>)>,
    done: bool,
}

impl Truck {
    pub(super) fn new(entity: Box<dyn Entity>) -> Self {
        Self {
            entity,
            carry: None,
            done: false,
        }
    }
}

/// Where the generator's time went.
#[derive(Debug, Default)]
pub(super) struct GenStats {
    pub samples: u64,
    pub batches: u64,
    pub frame_bytes: u64,
    /// Drawing the dataset's random walks.
    pub generate: Duration,
    /// Encoding chunks and frames.
    pub encode: Duration,
    /// Waiting for an agent to take a frame.
    pub blocked: Duration,
    pub elapsed: Duration,
    /// The thread's CPU time.
    pub cpu: Duration,
}

pub(super) struct Generator {
    pub spec: DatasetSpec,
    pub trucks: Vec<Truck>,
    pub chunk_ticks: i64,
    pub trucks_per_batch: usize,
    pub agents: Vec<(AgentId, mpsc::Sender<Frame>)>,
}

impl Generator {
    /// Produces every batch and hands each to its agent; returns when all are handed over.
    pub(super) fn run(mut self) -> anyhow::Result<GenStats> {
        let started = Instant::now();
        let mut stats = GenStats::default();
        let k = self.spec.dataset.series_per_entity();
        let mut buffers: Vec<Vec<Sample>> = vec![Vec::new(); k];
        let mut values = vec![0.0; k];
        let mut window_end = self.spec.start_ms;
        let mut batch_no = 0u64;
        while self.trucks.iter().any(|t| !t.done || t.carry.is_some()) {
            window_end += self.chunk_ticks * TICK_MS;
            for group in self.trucks.chunks_mut(self.trucks_per_batch) {
                let mut series = Vec::with_capacity(group.len() * k);
                let mut samples = 0u64;
                for truck in group {
                    let t = Instant::now();
                    fill_window(truck, window_end, &mut buffers, &mut values);
                    let t2 = Instant::now();
                    stats.generate += t2 - t;
                    for (info, buf) in truck.entity.series().iter().zip(&mut buffers) {
                        if buf.is_empty() {
                            continue;
                        }
                        samples += buf.len() as u64;
                        let taken = std::mem::replace(buf, Vec::with_capacity(buf.len() + 2));
                        series.push(SeriesChunk::encode(info.labels.clone(), taken)?);
                    }
                    stats.encode += t2.elapsed();
                }
                if series.is_empty() {
                    continue;
                }
                let t = Instant::now();
                let (agent_id, tx) = &self.agents[(batch_no % self.agents.len() as u64) as usize];
                let sequence = batch_no / self.agents.len() as u64 + 1;
                let bytes = Message::WriteBatch(WriteBatch {
                    agent_id: agent_id.clone(),
                    epoch: EPOCH,
                    sequence,
                    tenant: Tenant::default(),
                    series,
                })
                .encode();
                if bytes.len() > MAX_FRAME_BYTES {
                    bail!(
                        "a batch of {samples} samples takes {} bytes, more than a frame may: \
                         lower --batch-samples",
                        bytes.len()
                    );
                }
                let t2 = Instant::now();
                stats.encode += t2 - t;
                stats.samples += samples;
                stats.batches += 1;
                stats.frame_bytes += bytes.len() as u64;
                let frame = Frame {
                    sequence,
                    samples,
                    bytes,
                };
                if tx.blocking_send(frame).is_err() {
                    bail!("agent {agent_id} stopped taking batches");
                }
                stats.blocked += t2.elapsed();
                batch_no += 1;
            }
        }
        stats.elapsed = started.elapsed();
        stats.cpu = thread_cpu("thread-self").unwrap_or_default();
        Ok(stats)
    }
}

/// Moves a truck's ticks before `window_end` into one buffer per series.
fn fill_window(
    truck: &mut Truck,
    window_end: i64,
    buffers: &mut [Vec<Sample>],
    values: &mut [f64],
) {
    let mut push = |ts: i64, values: &[f64]| {
        for (buf, &v) in buffers.iter_mut().zip(values) {
            buf.push(Sample::new(ts, v));
        }
    };
    match truck.carry.take() {
        Some((ts, carried)) if ts < window_end => push(ts, &carried),
        Some(later) => {
            truck.carry = Some(later);
            return;
        }
        None => {}
    }
    while !truck.done {
        match truck.entity.next_tick(values) {
            Some(t) if t.timestamp_ms < window_end => push(t.timestamp_ms, values),
            Some(t) => {
                truck.carry = Some((t.timestamp_ms, values.to_vec()));
                return;
            }
            None => truck.done = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{self, Dataset};

    #[test]
    fn windows_hold_every_tick_once_in_order() {
        let spec = DatasetSpec::new(Dataset::IotTrucks, 2, 3_600_000);
        let expected: Vec<Vec<Sample>> = datasets::generate(&spec).map(|s| s.samples).collect();
        let mut got: Vec<Vec<Sample>> = vec![Vec::new(); expected.len()];
        for i in 0..spec.entities {
            let mut truck = Truck::new(datasets::entity(&spec, i));
            let mut buffers = vec![Vec::new(); 10];
            let mut values = vec![0.0; 10];
            let mut end = spec.start_ms;
            while !truck.done || truck.carry.is_some() {
                end += 7 * TICK_MS;
                fill_window(&mut truck, end, &mut buffers, &mut values);
                for (j, b) in buffers.iter_mut().enumerate() {
                    assert!(b.iter().all(|s| s.timestamp_ms < end));
                    got[i as usize * 10 + j].append(b);
                }
            }
        }
        assert_eq!(got, expected);
    }
}

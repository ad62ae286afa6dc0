//! What every simulated device publishes, and when: a pure function of the [`PlanOptions`].
//!
//! A device is one entity of a reference dataset ([`crate::datasets`]): its values, timestamps
//! and intervals are exactly the dataset's. On top of them, from two more random streams of
//! their own (so that turning them on never moves a dataset value):
//!
//! - **Anomalies** (stream `fleet-anomalies`, per device). At every dataset tick, for each kind
//!   in the order spikes, drifts, stuck, silent, skew, three draws are made whether the kind is
//!   on or not: `start` (true with probability `rate`), `series` (uniform among the device's
//!   series) and `u` (uniform in `[0, 1)`). A kind that is on and not already running starts an
//!   episode when `start` is true, from that tick:
//!   - `spikes`: one value, that tick only, becomes `v ± 10 (|v| + 1)` (`+` when `u < 0.5`);
//!   - `drifts`: for `ticks` ticks, the series gains `k × 0.05 (|v₀| + 1)` at the k-th tick
//!     (k = 1..ticks, v₀ its value when the drift started, sign `+` when `u < 0.5`), then
//!     snaps back;
//!   - `stuck`: for `ticks` ticks, the series repeats its value of the first tick;
//!   - `silent`: for `ticks` ticks the device sends nothing; these ticks are lost for good;
//!   - `skew`: for `ticks` ticks the device's timestamps are off by `±(5 s + |u − 0.5| × 590 s)`
//!     (`+` when `u < 0.5`), a clock that is wrong; when it publishes does not change.
//!
//!   Applied in the order stuck, drift, spike, so a spike on a stuck series still shows.
//! - **Offline periods** (stream `fleet-offline`, per device). Online and offline stretches
//!   alternate, starting online, with exponential lengths: offline mean `offline_mean_ms`,
//!   online mean `offline_mean_ms × (1 − fraction) / fraction`, so a device is offline for
//!   `fraction` of the time on average. A tick whose timestamp falls offline is dropped, or with
//!   `backlog` held and published when the device comes back, with its original timestamp.
//!
//! Timing: a tick is due at its dataset arrival time (its timestamp, or later for `iot-trucks`'
//! late ticks), or at the end of the offline stretch that held it. [`DeviceScript`] yields one
//! device's ticks in due order (ties in tick order).
//!
//! # Topics and payloads
//!
//! A device tick becomes one MQTT message per Influx measurement of the dataset (`sensors` for
//! `sensor-mix`, `readings` and `diagnostics` for `iot-trucks`, `prometheus` for
//! `metrics-mix`): topic `<site>/<device>/<measurement>`, payload a JSON object
//! `{"ts":<ms>,"<field>":<value>,...}` in series order. Under the edge agent's default rule
//! `{site}/{device}/{metric}` this gives the series `<measurement>_<field>{site,device}` at
//! `ts`, e.g. `sensors_temperature_celsius{site="site_0",device="sensor_3"}` and
//! `readings_latitude{site="East",device="truck_7"}`. `<site>`/`<device>` are the labels
//! `site`/`device` (sensor-mix), `fleet`/`name` (iot-trucks), `job`/`instance` (metrics-mix).
//! A field is the series' Influx field; where several series of one measurement share it
//! (metrics-mix: `node_cpu_seconds_total` per cpu and mode), the labels that tell them apart
//! are appended as `_<label>_<value>`. Keys keep only `[A-Za-z0-9_]` (others become `_`).
//! Values are printed in their shortest round-trip decimal form, so the agent stores exactly
//! the generated double; a non-finite value (none of the datasets has one) is left out.

use crate::datasets::rng::Rng;
use crate::datasets::{Dataset, DatasetSpec, Entity, SeriesInfo, entity};
use protocols::model::METRIC_NAME_LABEL;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Which anomaly kinds are on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnomalyKinds {
    pub spikes: bool,
    pub drifts: bool,
    pub stuck: bool,
    pub silent: bool,
    pub skew: bool,
}

impl AnomalyKinds {
    pub const NAMES: [&'static str; 5] = ["spikes", "drifts", "stuck", "silent", "skew"];

    /// Parses `spikes,drifts,stuck,silent,skew` (any subset, `all`, or `none`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut k = Self::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "spikes" | "spike" => k.spikes = true,
                "drifts" | "drift" => k.drifts = true,
                "stuck" => k.stuck = true,
                "silent" => k.silent = true,
                "skew" => k.skew = true,
                "all" => {
                    k = Self {
                        spikes: true,
                        drifts: true,
                        stuck: true,
                        silent: true,
                        skew: true,
                    }
                }
                "none" => k = Self::default(),
                other => {
                    return Err(format!(
                        "unknown anomaly {other:?}: expected spikes, drifts, stuck, silent, skew"
                    ));
                }
            }
        }
        Ok(k)
    }

    fn on(&self) -> [bool; 5] {
        [self.spikes, self.drifts, self.stuck, self.silent, self.skew]
    }

    pub fn any(&self) -> bool {
        self.on().iter().any(|&b| b)
    }
}

/// Anomaly injection: which kinds, how often an episode starts, how long it lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomalies {
    pub kinds: AnomalyKinds,
    /// Probability that an episode of a kind starts at a given tick of a device.
    pub rate: f64,
    /// Length of a drift, stuck, silent or skew episode, in the device's ticks.
    pub ticks: u32,
}

impl Default for Anomalies {
    fn default() -> Self {
        Self {
            kinds: AnomalyKinds::default(),
            rate: 0.001,
            ticks: 30,
        }
    }
}

/// Offline periods: devices go silent for a while and come back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offline {
    /// Average fraction of the time a device is offline, in `[0, 1)`; 0 turns it off.
    pub fraction: f64,
    /// Mean length of one offline stretch, in ms.
    pub mean_ms: i64,
    /// Publish the ticks taken while offline when the device comes back (original timestamps).
    pub backlog: bool,
}

impl Default for Offline {
    fn default() -> Self {
        Self {
            fraction: 0.0,
            mean_ms: 60_000,
            backlog: false,
        }
    }
}

/// Everything that determines what a fleet publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    pub dataset: Dataset,
    pub devices: u64,
    pub seed: u64,
    /// Dataset start, ms since the Unix epoch.
    pub start_ms: i64,
    /// Ticks whose timestamp is before `start + duration` are generated; `None`: no end.
    pub duration_ms: Option<i64>,
    /// Only the first `metrics` series of each device (`None`: all of them).
    pub metrics: Option<usize>,
    pub anomalies: Anomalies,
    pub offline: Offline,
}

impl PlanOptions {
    pub fn new(dataset: Dataset, devices: u64, seed: u64, start_ms: i64) -> Self {
        Self {
            dataset,
            devices,
            seed,
            start_ms,
            duration_ms: None,
            metrics: None,
            anomalies: Anomalies::default(),
            offline: Offline::default(),
        }
    }

    fn spec(&self) -> DatasetSpec {
        DatasetSpec {
            dataset: self.dataset,
            entities: self.devices,
            start_ms: self.start_ms,
            // Far enough for any run, small enough that `start + duration` cannot overflow.
            duration_ms: self.duration_ms.unwrap_or(i64::MAX / 4),
            seed: self.seed,
        }
    }

    /// Series each device publishes.
    pub fn series_per_device(&self) -> usize {
        let all = self.dataset.series_per_entity();
        self.metrics.map_or(all, |m| m.clamp(1, all))
    }
}

/// Counts of what the plan did to the dataset, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanCounts {
    /// Episodes started, per kind in [`AnomalyKinds::NAMES`] order.
    pub anomalies: [u64; 5],
    /// Ticks lost to `silent` episodes.
    pub silenced_ticks: u64,
    /// Ticks lost while offline (no backlog).
    pub offline_dropped_ticks: u64,
    /// Ticks held while offline and published on reconnect.
    pub offline_backlogged_ticks: u64,
}

impl PlanCounts {
    pub fn add(&mut self, other: &PlanCounts) {
        for (a, b) in self.anomalies.iter_mut().zip(other.anomalies) {
            *a += b;
        }
        self.silenced_ticks += other.silenced_ticks;
        self.offline_dropped_ticks += other.offline_dropped_ticks;
        self.offline_backlogged_ticks += other.offline_backlogged_ticks;
    }
}

/// One tick of one device as it is published.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTick {
    /// When it is published, in dataset time (ms).
    pub due_ms: i64,
    /// The timestamp the device puts on it (skewed during a `skew` episode).
    pub timestamp_ms: i64,
    /// One value per published series, in series order.
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Episode {
    /// Ticks left, 0 when not running.
    left: u32,
    /// Ticks done so far.
    done: u32,
    series: usize,
    /// Stuck value, drift step or skew offset.
    amount: f64,
}

const SPIKE: usize = 0;
const DRIFT: usize = 1;
const STUCK: usize = 2;
const SILENT: usize = 3;
const SKEW: usize = 4;

struct Pending {
    key: (i64, u64),
    tick: DeviceTick,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// One device's ticks, in due order. See the module doc.
pub struct DeviceScript {
    pub index: u64,
    entity: Box<dyn Entity>,
    metrics: usize,
    anomalies: Anomalies,
    offline: Offline,
    anomaly_rng: Rng,
    offline_rng: Rng,
    episodes: [Episode; 5],
    /// Current offline stretch `[start, end)`, the next one once the tick time passes it.
    offline_window: Option<(i64, i64)>,
    /// The next tick from the entity, not yet processed: (timestamp, arrival, values).
    lookahead: Option<(i64, i64, Vec<f64>)>,
    pending: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    pub counts: PlanCounts,
}

impl DeviceScript {
    pub fn new(options: &PlanOptions, index: u64) -> Self {
        let spec = options.spec();
        let mut entity = entity(&spec, index);
        let lookahead = pull(entity.as_mut());
        let mut offline_rng = Rng::for_entity("fleet-offline", options.seed, index);
        let offline_window = first_window(&options.offline, &mut offline_rng, options.start_ms);
        Self {
            index,
            entity,
            metrics: options.series_per_device(),
            anomalies: options.anomalies,
            offline: options.offline,
            anomaly_rng: Rng::for_entity("fleet-anomalies", options.seed, index),
            offline_rng,
            episodes: [Episode::default(); 5],
            offline_window,
            lookahead,
            pending: BinaryHeap::new(),
            seq: 0,
            counts: PlanCounts::default(),
        }
    }

    /// The series the device publishes (the first `metrics` of its entity).
    pub fn series(&self) -> &[Arc<SeriesInfo>] {
        &self.entity.series()[..self.metrics]
    }

    /// Due time of the next tick, without taking it.
    pub fn peek_due(&mut self) -> Option<i64> {
        self.fill();
        self.pending.peek().map(|Reverse(p)| p.key.0)
    }

    /// Makes sure the head of `pending` is the next tick in due order, if there is one: a
    /// pending tick is final once no unprocessed tick can be due before it (every tick is due
    /// at or after its timestamp, and timestamps only grow).
    fn fill(&mut self) {
        loop {
            let head = self.pending.peek().map(|Reverse(p)| p.key.0);
            match (&self.lookahead, head) {
                (None, _) => return,
                (Some((ts, ..)), Some(due)) if due <= *ts => return,
                _ => {}
            }
            if let Some((ts, arrival, values)) = self.lookahead.take() {
                self.lookahead = pull(self.entity.as_mut());
                self.process(ts, arrival, values);
            }
        }
    }

    fn process(&mut self, ts: i64, arrival: i64, mut values: Vec<f64>) {
        values.truncate(self.metrics);
        let (silent, skew) = self.apply_anomalies(&mut values);
        let mut due = arrival;
        if let Some(end) = self.offline_at(ts) {
            if !self.offline.backlog {
                self.counts.offline_dropped_ticks += 1;
                return;
            }
            if !silent {
                self.counts.offline_backlogged_ticks += 1;
            }
            due = due.max(end);
        }
        if silent {
            self.counts.silenced_ticks += 1;
            return;
        }
        self.seq += 1;
        self.pending.push(Reverse(Pending {
            key: (due, self.seq),
            tick: DeviceTick {
                due_ms: due,
                timestamp_ms: ts + skew,
                values,
            },
        }));
    }

    /// Draws this tick's anomaly numbers and applies running episodes: (silenced, clock skew
    /// in ms).
    fn apply_anomalies(&mut self, values: &mut [f64]) -> (bool, i64) {
        let a = self.anomalies;
        let on = a.kinds.on();
        let n = values.len();
        for (kind, &on) in on.iter().enumerate() {
            let start = self.anomaly_rng.chance(a.rate);
            let series = self.anomaly_rng.index(n.max(1));
            let u = self.anomaly_rng.unit();
            let sign = if u < 0.5 { 1.0 } else { -1.0 };
            let e = &mut self.episodes[kind];
            if !on || !start || e.left > 0 || n == 0 {
                continue;
            }
            self.counts.anomalies[kind] += 1;
            let v = values[series];
            *e = Episode {
                left: if kind == SPIKE { 1 } else { a.ticks.max(1) },
                done: 0,
                series,
                amount: match kind {
                    SPIKE => sign * 10.0 * (v.abs() + 1.0),
                    DRIFT => sign * 0.05 * (v.abs() + 1.0),
                    STUCK => v,
                    SKEW => (sign * (5_000.0 + (u - 0.5).abs() * 590_000.0)).round(),
                    _ => 0.0,
                },
            };
        }
        let mut silent = false;
        let mut skew_ms = 0;
        for kind in [STUCK, DRIFT, SPIKE, SILENT, SKEW] {
            let e = &mut self.episodes[kind];
            if e.left == 0 {
                continue;
            }
            e.done += 1;
            e.left -= 1;
            match kind {
                STUCK => values[e.series] = e.amount,
                DRIFT => values[e.series] += e.amount * f64::from(e.done),
                SPIKE => values[e.series] += e.amount,
                SILENT => silent = true,
                _ => skew_ms = e.amount as i64,
            }
        }
        (silent, skew_ms)
    }

    /// The end of the offline stretch holding `ts`, if it is offline.
    fn offline_at(&mut self, ts: i64) -> Option<i64> {
        loop {
            let (start, end) = self.offline_window?;
            if ts < start {
                return None;
            }
            if ts < end {
                return Some(end);
            }
            self.offline_window = next_window(&self.offline, &mut self.offline_rng, end);
        }
    }
}

impl Iterator for DeviceScript {
    type Item = DeviceTick;

    fn next(&mut self) -> Option<DeviceTick> {
        self.fill();
        self.pending.pop().map(|Reverse(p)| p.tick)
    }
}

fn pull(entity: &mut dyn Entity) -> Option<(i64, i64, Vec<f64>)> {
    let mut values = vec![0.0; entity.series().len()];
    let t = entity.next_tick(&mut values)?;
    Some((t.timestamp_ms, t.arrival_ms, values))
}

fn exponential(rng: &mut Rng, mean: f64) -> i64 {
    (-libm::log(1.0 - rng.unit()) * mean).round().max(1.0) as i64
}

fn first_window(o: &Offline, rng: &mut Rng, start_ms: i64) -> Option<(i64, i64)> {
    next_window(o, rng, start_ms)
}

/// The offline stretch after an online stretch that begins at `online_from`.
fn next_window(o: &Offline, rng: &mut Rng, online_from: i64) -> Option<(i64, i64)> {
    if !(o.fraction > 0.0 && o.fraction < 1.0) {
        return None;
    }
    let mean_off = o.mean_ms.max(1) as f64;
    let mean_on = mean_off * (1.0 - o.fraction) / o.fraction;
    let start = online_from.saturating_add(exponential(rng, mean_on));
    let end = start.saturating_add(exponential(rng, mean_off));
    Some((start, end))
}

/// One MQTT message of a device tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub due_ms: i64,
    pub device: u64,
    pub topic: String,
    pub payload: Vec<u8>,
    /// Samples the edge agent makes of it.
    pub samples: u32,
}

/// Turns a device's ticks into messages. See the module doc for the layout.
pub struct Encoder {
    /// Per measurement: topic and (series position, JSON key) of its fields.
    groups: Vec<(String, Vec<(usize, String)>)>,
}

impl Encoder {
    pub fn new(dataset: Dataset, series: &[Arc<SeriesInfo>]) -> Self {
        let (site_label, device_label) = match dataset {
            Dataset::SensorMix => ("site", "device"),
            Dataset::IotTrucks => ("fleet", "name"),
            Dataset::MetricsMix => ("job", "instance"),
        };
        let first = series.first();
        let site = first
            .and_then(|s| s.labels.get(site_label))
            .unwrap_or("site");
        let device = first
            .and_then(|s| s.labels.get(device_label))
            .unwrap_or("device");
        // Labels that are the same on every series of the device say nothing about a field.
        let constant = |name: &str| {
            let v = first.and_then(|s| s.labels.get(name));
            series.iter().all(|s| s.labels.get(name) == v)
        };
        let mut groups: Vec<(String, Vec<(usize, String)>)> = Vec::new();
        for (i, s) in series.iter().enumerate() {
            let shared = series
                .iter()
                .filter(|o| {
                    o.influx_measurement == s.influx_measurement && o.influx_field == s.influx_field
                })
                .count()
                > 1;
            let mut key = s.influx_field.to_owned();
            if shared {
                for l in s.labels.iter() {
                    if l.name != METRIC_NAME_LABEL && !constant(&l.name) {
                        let _ = write!(key, "_{}_{}", l.name, l.value);
                    }
                }
            }
            let key: String = key
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let topic = format!(
                "{}/{}/{}",
                topic_level(site),
                topic_level(device),
                s.influx_measurement
            );
            match groups.iter_mut().find(|(t, _)| *t == topic) {
                Some((_, fields)) => fields.push((i, key)),
                None => groups.push((topic, vec![(i, key)])),
            }
        }
        Self { groups }
    }

    /// The messages of one tick, in measurement order.
    pub fn encode(&self, device: u64, tick: &DeviceTick) -> Vec<Publish> {
        let mut out = Vec::with_capacity(self.groups.len());
        for (topic, fields) in &self.groups {
            let mut payload = String::with_capacity(24 + fields.len() * 24);
            let _ = write!(payload, "{{\"ts\":{}", tick.timestamp_ms);
            let mut samples = 0u32;
            for (i, key) in fields {
                let Some(&v) = tick.values.get(*i) else {
                    continue;
                };
                if v.is_finite() {
                    let _ = write!(payload, ",\"{key}\":{v}");
                    samples += 1;
                }
            }
            payload.push('}');
            if samples > 0 {
                out.push(Publish {
                    due_ms: tick.due_ms,
                    device,
                    topic: topic.clone(),
                    payload: payload.into_bytes(),
                    samples,
                });
            }
        }
        out
    }
}

/// MQTT topic levels may not hold wildcards or separators.
fn topic_level(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '/' | '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect()
}

/// One device's messages in due order: its script and its encoder.
pub struct DeviceMessages {
    pub script: DeviceScript,
    encoder: Encoder,
    buffered: std::collections::VecDeque<Publish>,
}

impl DeviceMessages {
    pub fn new(options: &PlanOptions, index: u64) -> Self {
        let script = DeviceScript::new(options, index);
        let encoder = Encoder::new(options.dataset, script.series());
        Self {
            script,
            encoder,
            buffered: std::collections::VecDeque::new(),
        }
    }

    /// Due time of the next message.
    pub fn peek_due(&mut self) -> Option<i64> {
        match self.buffered.front() {
            Some(p) => Some(p.due_ms),
            None => self.script.peek_due(),
        }
    }
}

impl Iterator for DeviceMessages {
    type Item = Publish;

    fn next(&mut self) -> Option<Publish> {
        while self.buffered.is_empty() {
            let tick = self.script.next()?;
            self.buffered
                .extend(self.encoder.encode(self.script.index, &tick));
        }
        self.buffered.pop_front()
    }
}

/// Every message of the devices `devices`, merged in due order (ties by device index, then in
/// each device's order). The fleet runs one of these per connection; `simulator export
/// --format mqtt` runs one over the whole fleet.
pub struct Merged {
    devices: Vec<DeviceMessages>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

impl Merged {
    pub fn new(options: &PlanOptions, devices: impl IntoIterator<Item = u64>) -> Self {
        let mut devices: Vec<DeviceMessages> = devices
            .into_iter()
            .map(|i| DeviceMessages::new(options, i))
            .collect();
        let heap = devices
            .iter_mut()
            .enumerate()
            .filter_map(|(k, d)| d.peek_due().map(|due| Reverse((due, k))))
            .collect();
        Self { devices, heap }
    }

    /// Due time of the next message.
    pub fn peek_due(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    /// What the plan did so far, summed over the devices.
    pub fn counts(&self) -> PlanCounts {
        let mut c = PlanCounts::default();
        for d in &self.devices {
            c.add(&d.script.counts);
        }
        c
    }
}

impl Iterator for Merged {
    type Item = Publish;

    fn next(&mut self) -> Option<Publish> {
        let Reverse((_, k)) = self.heap.pop()?;
        let d = &mut self.devices[k];
        let p = d.next();
        if let Some(due) = d.peek_due() {
            self.heap.push(Reverse((due, k)));
        }
        p
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

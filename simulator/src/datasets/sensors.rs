//! `sensor-mix`: a building/plant IoT fleet, eight series per device.
//!
//! Exactly as DATASETS.md specifies, plus the choices it leaves open (each marked *choice*):
//!
//! - Interval: device `i` takes slot `i mod 20` of the pattern 1 s ×1, 5 s ×2, 10 s ×5, 15 s ×4,
//!   30 s ×4, 60 s ×4 (in that order). All eight series of a device share its ticks.
//! - Phase: the first tick at `start + phase`, phase a uniform integer in `0..interval` ms. Every
//!   interval divides a day, so each device has exactly `86,400 / interval_s` ticks per day.
//! - Labels (*choice*, deterministic from the index so that entity 7 never depends on the fleet
//!   size): `device` = `sensor_<i>`, `floor` = `floor_<(i / 5) mod 5>`, `building` =
//!   `building_<(i / 25) mod 4>`, `site` = `site_<i / 100>`; `kind` names the interval slot:
//!   `machine` (1 s), `hvac` (5 s), `room` (10 s), `lab` (15 s), `storage` (30 s), `outdoor` (60 s).
//! - Device constants, drawn in this order: phase, temperature base 18..24 and amplitude 1..4,
//!   humidity base 35..60, initial pressure 980..1040 (*choice*), CO₂ amplitude 200..800, initial
//!   power 0..5,000 W (*choice*), initial energy 0..1,000,000 Wh (*choice*: a meter that has been
//!   counting for a while), vibration median 0.05..2, battery start 3.3..3.6 V and drain
//!   0.04..0.17 V/day. The door starts closed.
//! - Per tick, in this order (Δ = interval in seconds, d = daily sine `sin(2π (h − 9) / 24)` of
//!   the UTC hour h, peaking at 15:00):
//!   1. temperature = base + amplitude·d + normal(0, 0.05); 2 decimals.
//!   2. humidity walk += normal(0, 0.02·√Δ) clamped to ±10 (*choice*: the spec gives the bound,
//!      not the step); humidity = base − 2·amplitude·d + walk, clamped to 0..100; 1 decimal.
//!   3. pressure += normal(0, 0.02·√Δ), clamped to 950..1050; 1 decimal.
//!   4. CO₂ = 420 + amplitude·occupancy + AR(1) noise; integer. occupancy = `sin(π (h − 7) / 12)`
//!      between 07:00 and 19:00 UTC, else 0 (*choice*: a smooth working day, every day). The
//!      noise is e ← φ·e + normal(0, 15·√(1 − φ²)) with φ = exp(−Δ / 600) (*choice*: 15 ppm
//!      stationary sd, 10 min correlation), so its character does not depend on the interval.
//!   5. power += normal(0, 20·√Δ) clamped to 0..5,000 W (*choice* of step); a reboot with
//!      probability Δ / 259,200 (one per 3 days on average) sets the energy to 0; then energy +=
//!      power·Δ / 3600; 1 decimal (*choice*: the spec names no resolution; 0.1 Wh is a typical
//!      meter's).
//!   6. door flips with probability 1 − exp(−Δ / dwell), dwell 1,800 s closed, 120 s open; 0/1.
//!   7. vibration = median·exp(0.25·normal(0, 1)), unrounded.
//!   8. battery = start − drain·days since the dataset start + normal(0, 0.002); 3 decimals.
//!
//!   Every draw is made on every tick, so one device's stream never depends on an outcome.
//! - No jitter, no missing ticks, no late rows. Anomaly injection (off by default in the spec) is
//!   not implemented yet.

use super::rng::{Rng, round_to};
use super::{Entity, MetricType, SeriesInfo, TickTime, series_info};
use std::f64::consts::{PI, TAU};
use std::sync::Arc;

pub(super) const NAME: &str = "sensor-mix";
pub(super) const SERIES_PER_DEVICE: usize = 8;

/// Interval (s) and `kind` label of each slot of the 20-device pattern.
const PATTERN: [(i64, &str); 20] = [
    (1, "machine"),
    (5, "hvac"),
    (5, "hvac"),
    (10, "room"),
    (10, "room"),
    (10, "room"),
    (10, "room"),
    (10, "room"),
    (15, "lab"),
    (15, "lab"),
    (15, "lab"),
    (15, "lab"),
    (30, "storage"),
    (30, "storage"),
    (30, "storage"),
    (30, "storage"),
    (60, "outdoor"),
    (60, "outdoor"),
    (60, "outdoor"),
    (60, "outdoor"),
];

/// Metric name and its type, in series order.
const METRICS: [(&str, MetricType); SERIES_PER_DEVICE] = [
    ("temperature_celsius", MetricType::Gauge),
    ("humidity_percent", MetricType::Gauge),
    ("pressure_hpa", MetricType::Gauge),
    ("co2_ppm", MetricType::Gauge),
    ("energy_wh_total", MetricType::Counter),
    ("door_open", MetricType::Gauge),
    ("vibration_rms", MetricType::Gauge),
    ("battery_volts", MetricType::Gauge),
];

const MS_PER_DAY: i64 = 86_400_000;

/// The interval of device `index`, in milliseconds.
#[cfg(test)]
pub(super) fn interval_ms(index: u64) -> i64 {
    PATTERN[(index % 20) as usize].0 * 1000
}

pub(super) struct Device {
    series: Vec<Arc<SeriesInfo>>,
    rng: Rng,
    interval_ms: i64,
    next_ms: i64,
    end_ms: i64,
    start_ms: i64,
    temp_base: f64,
    temp_amp: f64,
    hum_base: f64,
    hum_walk: f64,
    pressure: f64,
    co2_amp: f64,
    co2_noise: f64,
    power: f64,
    energy: f64,
    door_open: bool,
    vib_median: f64,
    batt_start: f64,
    batt_drain: f64,
}

impl Device {
    pub(super) fn new(seed: u64, index: u64, start_ms: i64, duration_ms: i64) -> Self {
        let (interval_s, kind) = PATTERN[(index % 20) as usize];
        let device = format!("sensor_{index}");
        let floor = format!("floor_{}", (index / 5) % 5);
        let building = format!("building_{}", (index / 25) % 4);
        let site = format!("site_{}", index / 100);
        let tags = [
            ("site", site.as_str()),
            ("building", building.as_str()),
            ("floor", floor.as_str()),
            ("device", device.as_str()),
            ("kind", kind),
        ];
        let series = METRICS
            .iter()
            .map(|&(metric, ty)| series_info(metric, metric, ty, "sensors", metric, &tags))
            .collect();

        let interval_ms = interval_s * 1000;
        let mut rng = Rng::for_entity(NAME, seed, index);
        let phase = rng.int(0, interval_ms - 1);
        Self {
            series,
            interval_ms,
            next_ms: start_ms + phase,
            end_ms: start_ms.saturating_add(duration_ms.max(0)),
            start_ms,
            temp_base: rng.uniform(18.0, 24.0),
            temp_amp: rng.uniform(1.0, 4.0),
            hum_base: rng.uniform(35.0, 60.0),
            hum_walk: 0.0,
            pressure: rng.uniform(980.0, 1040.0),
            co2_amp: rng.uniform(200.0, 800.0),
            co2_noise: 0.0,
            power: rng.uniform(0.0, 5000.0),
            energy: rng.uniform(0.0, 1_000_000.0),
            door_open: false,
            vib_median: rng.uniform(0.05, 2.0),
            batt_start: rng.uniform(3.3, 3.6),
            batt_drain: rng.uniform(0.04, 0.17),
            rng,
        }
    }
}

/// The UTC hour of day (fractional) of a Unix timestamp in milliseconds.
fn utc_hour(ts_ms: i64) -> f64 {
    ts_ms.rem_euclid(MS_PER_DAY) as f64 / 3_600_000.0
}

impl Entity for Device {
    fn series(&self) -> &[Arc<SeriesInfo>] {
        &self.series
    }

    fn next_tick(&mut self, values: &mut [f64]) -> Option<TickTime> {
        let ts = self.next_ms;
        if ts >= self.end_ms {
            return None;
        }
        self.next_ms += self.interval_ms;
        let dt = self.interval_ms as f64 / 1000.0;
        let hour = utc_hour(ts);
        let daily = libm::sin(TAU * (hour - 9.0) / 24.0);
        let rng = &mut self.rng;

        values[0] = round_to(
            self.temp_base + self.temp_amp * daily + rng.normal(0.0, 0.05),
            2,
        );

        self.hum_walk = (self.hum_walk + rng.normal(0.0, 0.02 * libm::sqrt(dt))).clamp(-10.0, 10.0);
        let humidity = self.hum_base - 2.0 * self.temp_amp * daily + self.hum_walk;
        values[1] = round_to(humidity.clamp(0.0, 100.0), 1);

        self.pressure =
            (self.pressure + rng.normal(0.0, 0.02 * libm::sqrt(dt))).clamp(950.0, 1050.0);
        values[2] = round_to(self.pressure, 1);

        let occupancy = if (7.0..19.0).contains(&hour) {
            libm::sin(PI * (hour - 7.0) / 12.0)
        } else {
            0.0
        };
        let phi = libm::exp(-dt / 600.0);
        self.co2_noise = phi * self.co2_noise + rng.normal(0.0, 15.0 * libm::sqrt(1.0 - phi * phi));
        values[3] = round_to(
            (420.0 + self.co2_amp * occupancy + self.co2_noise).max(0.0),
            0,
        );

        self.power = (self.power + rng.normal(0.0, 20.0 * libm::sqrt(dt))).clamp(0.0, 5000.0);
        if rng.chance(dt / (3.0 * 86_400.0)) {
            self.energy = 0.0;
        }
        self.energy += self.power * dt / 3600.0;
        values[4] = round_to(self.energy, 1);

        let dwell = if self.door_open { 120.0 } else { 1800.0 };
        if rng.chance(1.0 - libm::exp(-dt / dwell)) {
            self.door_open = !self.door_open;
        }
        values[5] = if self.door_open { 1.0 } else { 0.0 };

        values[6] = self.vib_median * libm::exp(0.25 * rng.std_normal());

        let days = (ts - self.start_ms) as f64 / MS_PER_DAY as f64;
        values[7] = round_to(
            self.batt_start - self.batt_drain * days + rng.normal(0.0, 0.002),
            3,
        );

        Some(TickTime {
            timestamp_ms: ts,
            arrival_ms: ts,
        })
    }
}

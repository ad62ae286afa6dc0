//! `iot-trucks`: one device per truck, ten series per truck, a tick every 10 s.
//!
//! Exactly as DATASETS.md specifies, plus the choices it leaves open (each marked *choice*):
//!
//! - Tags, drawn once from the truck's stream in this order: `fleet` (1 of 4), `driver` (1 of 10),
//!   `model` (1 of 5), `device_version` (v1.0..v1.5). `load_capacity`, `fuel_capacity` and
//!   `nominal_fuel_consumption` follow from the model (*choice*, as in TSBS), so they are fixed per
//!   truck. `name` is `truck_<index>`, index from 0.
//! - Initial state, drawn next (*choice*): every walk starts uniform over its range (latitude
//!   −90..90, longitude −180..180, elevation 0..5,000 m as in TSBS; status uniform 0..5).
//! - Per tick, in this order: the ten walk steps (series order below; uniform steps except status,
//!   normal(0, 1)), then `missing` (p = 0.01), `jitter` (integer −50..=50 ms, its absolute value on
//!   tick 0), `late` (p = 0.005) and the delay (integer 1,000..=60,000 ms). All five draws are made
//!   on every tick, missing or not, so one truck's stream never depends on an outcome.
//! - A walk's state is the clamped, *unrounded* value; the sample is that value rounded. (Keeping
//!   the rounded value as state would freeze `fuel_state`: its step is at most 0.001 and it is
//!   rounded to 0.01.) `fuel_state` refuels to 1 when it reaches 0.
//! - Missing and late apply to the whole tick (*choice*): a truck sends one message per tick, so
//!   all ten samples of a tick share its timestamp, its absence and its delay.
//!
//! Series order per truck: `readings_{latitude, longitude, elevation, velocity, heading, grade,
//! fuel_consumption}`, `diagnostics_{load, fuel_state, status}`.

use super::rng::{Rng, round_to};
use super::{Entity, MetricType, SeriesInfo, TickTime, series_info};
use std::sync::Arc;

pub(super) const NAME: &str = "iot-trucks";
/// Nominal time between two ticks of one truck.
pub(super) const INTERVAL_MS: i64 = 10_000;
pub(super) const SERIES_PER_TRUCK: usize = 10;

const FLEETS: [&str; 4] = ["East", "West", "North", "South"];
const DRIVERS: [&str; 10] = [
    "Albert", "Andy", "Derek", "Imani", "Kofi", "Maria", "Rodney", "Seth", "Trish", "Yuki",
];
/// Model, load capacity (kg), fuel capacity (l), nominal fuel consumption (l/100 km).
const MODELS: [(&str, u32, u32, u32); 5] = [
    ("F-150", 2000, 200, 15),
    ("G-2000", 5000, 300, 19),
    ("H-2", 1500, 150, 12),
    ("R-7", 3000, 250, 17),
    ("T-800", 4000, 350, 22),
];
const DEVICE_VERSIONS: [&str; 6] = ["v1.0", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5"];

const MISSING_P: f64 = 0.01;
const LATE_P: f64 = 0.005;
const JITTER_MS: i64 = 50;
const LATE_MIN_MS: i64 = 1_000;
const LATE_MAX_MS: i64 = 60_000;

/// A clamped uniform random walk: range, half-width of the step, decimals of the sample.
#[derive(Clone, Copy)]
struct WalkSpec {
    measurement: &'static str,
    field: &'static str,
    metric: &'static str,
    lo: f64,
    hi: f64,
    step: f64,
    decimals: u32,
}

const fn walk(
    measurement: &'static str,
    field: &'static str,
    metric: &'static str,
    lo: f64,
    hi: f64,
    step: f64,
    decimals: u32,
) -> WalkSpec {
    WalkSpec {
        measurement,
        field,
        metric,
        lo,
        hi,
        step,
        decimals,
    }
}

/// The seven `readings` walks (uniform steps).
const READINGS: [WalkSpec; 7] = [
    walk(
        "readings",
        "latitude",
        "readings_latitude",
        -90.0,
        90.0,
        0.005,
        5,
    ),
    walk(
        "readings",
        "longitude",
        "readings_longitude",
        -180.0,
        180.0,
        0.005,
        5,
    ),
    walk(
        "readings",
        "elevation",
        "readings_elevation",
        0.0,
        5000.0,
        10.0,
        0,
    ),
    walk(
        "readings",
        "velocity",
        "readings_velocity",
        0.0,
        100.0,
        10.0,
        1,
    ),
    walk(
        "readings",
        "heading",
        "readings_heading",
        0.0,
        360.0,
        5.0,
        1,
    ),
    walk("readings", "grade", "readings_grade", 0.0, 100.0, 5.0, 1),
    walk(
        "readings",
        "fuel_consumption",
        "readings_fuel_consumption",
        0.0,
        50.0,
        5.0,
        1,
    ),
];

pub(super) struct Truck {
    series: Vec<Arc<SeriesInfo>>,
    rng: Rng,
    load_capacity: f64,
    readings: [f64; 7],
    load: f64,
    fuel_state: f64,
    status: f64,
    tick: i64,
    ticks: i64,
    start_ms: i64,
}

impl Truck {
    pub(super) fn new(seed: u64, index: u64, start_ms: i64, duration_ms: i64) -> Self {
        let mut rng = Rng::for_entity(NAME, seed, index);
        let fleet = FLEETS[rng.index(FLEETS.len())];
        let driver = DRIVERS[rng.index(DRIVERS.len())];
        let (model, load_capacity, fuel_capacity, nominal) = MODELS[rng.index(MODELS.len())];
        let device_version = DEVICE_VERSIONS[rng.index(DEVICE_VERSIONS.len())];

        let name = format!("truck_{index}");
        let load_capacity_s = load_capacity.to_string();
        let fuel_capacity_s = fuel_capacity.to_string();
        let nominal_s = nominal.to_string();
        let tags = [
            ("name", name.as_str()),
            ("fleet", fleet),
            ("driver", driver),
            ("model", model),
            ("device_version", device_version),
            ("load_capacity", load_capacity_s.as_str()),
            ("fuel_capacity", fuel_capacity_s.as_str()),
            ("nominal_fuel_consumption", nominal_s.as_str()),
        ];
        let mut series = Vec::with_capacity(SERIES_PER_TRUCK);
        for w in &READINGS {
            series.push(series_info(
                w.metric,
                w.metric,
                MetricType::Gauge,
                w.measurement,
                w.field,
                &tags,
            ));
        }
        for (metric, field) in [
            ("diagnostics_load", "load"),
            ("diagnostics_fuel_state", "fuel_state"),
            ("diagnostics_status", "status"),
        ] {
            series.push(series_info(
                metric,
                metric,
                MetricType::Gauge,
                "diagnostics",
                field,
                &tags,
            ));
        }

        let load_capacity = f64::from(load_capacity);
        let mut readings = [0.0; 7];
        for (value, w) in readings.iter_mut().zip(&READINGS) {
            *value = rng.uniform(w.lo, w.hi);
        }
        let load = rng.uniform(0.0, load_capacity);
        let fuel_state = rng.uniform(0.0, 1.0);
        let status = rng.uniform(0.0, 5.0);
        Self {
            series,
            rng,
            load_capacity,
            readings,
            load,
            fuel_state,
            status,
            tick: 0,
            ticks: ticks_in(duration_ms),
            start_ms,
        }
    }
}

/// Ticks whose nominal time falls in `[start, start + duration)`.
pub(super) fn ticks_in(duration_ms: i64) -> i64 {
    (duration_ms.max(0) + INTERVAL_MS - 1) / INTERVAL_MS
}

impl Entity for Truck {
    fn series(&self) -> &[Arc<SeriesInfo>] {
        &self.series
    }

    fn next_tick(&mut self, values: &mut [f64]) -> Option<TickTime> {
        while self.tick < self.ticks {
            let tick = self.tick;
            self.tick += 1;
            let rng = &mut self.rng;
            for (value, w) in self.readings.iter_mut().zip(&READINGS) {
                *value = (*value + rng.uniform(-w.step, w.step)).clamp(w.lo, w.hi);
            }
            let load_step = self.load_capacity / 100.0;
            self.load =
                (self.load + rng.uniform(-load_step, load_step)).clamp(0.0, self.load_capacity);
            self.fuel_state += rng.uniform(-0.001, 0.0);
            if self.fuel_state <= 0.0 {
                self.fuel_state = 1.0;
            }
            self.status = (self.status + rng.std_normal()).clamp(0.0, 5.0);

            let missing = rng.chance(MISSING_P);
            let mut jitter = rng.int(-JITTER_MS, JITTER_MS);
            if tick == 0 {
                jitter = jitter.abs();
            }
            let late = rng.chance(LATE_P);
            let delay = rng.int(LATE_MIN_MS, LATE_MAX_MS);
            if missing {
                continue;
            }
            for ((out, value), w) in values.iter_mut().zip(&self.readings).zip(&READINGS) {
                *out = round_to(*value, w.decimals);
            }
            values[7] = round_to(self.load, 0);
            values[8] = round_to(self.fuel_state, 2);
            values[9] = round_to(self.status, 0);
            let timestamp_ms = self.start_ms + tick * INTERVAL_MS + jitter;
            return Some(TickTime {
                timestamp_ms,
                arrival_ms: if late {
                    timestamp_ms + delay
                } else {
                    timestamp_ms
                },
            });
        }
        None
    }
}

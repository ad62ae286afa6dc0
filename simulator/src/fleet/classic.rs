//! The demo's small fleet (`simulator demo`): a fixed shape, one MQTT connection per device.
//! `simulator fleet` runs the dataset-based fleet of the parent module instead.
//!
//! Device `i` lives at topic prefix `site{i % sites}/dev{i}` and publishes every `interval`:
//! - plain-number payloads on `<prefix>/temperature_celsius` (2 decimals, daily cycle + random
//!   walk), `<prefix>/humidity_percent` (1 decimal) and `<prefix>/energy_wh_total` (a counter);
//! - one JSON object on `<prefix>/env` with `pressure_hpa`, `battery_volts` and `door_open`
//!   fields and an explicit `ts`, which the edge agent maps to `env_pressure_hpa` etc.
//!
//! Everything is deterministic from the seed: device `i` draws from its own random stream, so a
//! device behaves the same whatever the fleet size.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub host: String,
    pub port: u16,
    pub devices: usize,
    pub sites: usize,
    pub interval: Duration,
    pub seed: u64,
    pub qos: QoS,
}

/// Counters shared by every device task.
#[derive(Debug, Default)]
pub struct FleetStats {
    pub messages: AtomicU64,
    pub samples: AtomicU64,
    pub errors: AtomicU64,
}

/// One device's signals.
struct Device {
    prefix: String,
    rng: StdRng,
    temperature: f64,
    humidity: f64,
    energy_wh: f64,
    pressure: f64,
    battery: f64,
    door_open: bool,
}

fn round_to(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

impl Device {
    fn new(index: usize, sites: usize, seed: u64) -> Self {
        let stream = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = StdRng::seed_from_u64(stream);
        Self {
            prefix: format!("site{}/dev{}", index % sites.max(1), index),
            temperature: rng.random_range(18.0..24.0),
            humidity: rng.random_range(35.0..60.0),
            energy_wh: rng.random_range(0.0..10_000.0),
            pressure: rng.random_range(990.0..1030.0),
            battery: rng.random_range(3.3..3.6),
            door_open: false,
            rng,
        }
    }

    /// Advances every signal by one tick; returns the messages to publish.
    fn tick(&mut self, now_ms: i64) -> Vec<Message> {
        let r = &mut self.rng;
        let day_phase = (now_ms as f64 / 86_400_000.0) * std::f64::consts::TAU;
        self.temperature =
            (self.temperature + r.random_range(-0.05..0.05) + 0.01 * day_phase.sin())
                .clamp(-20.0, 50.0);
        self.humidity = (self.humidity + r.random_range(-0.3..0.3)).clamp(0.0, 100.0);
        self.energy_wh += r.random_range(0.0..5.0);
        self.pressure = (self.pressure + r.random_range(-0.1..0.1)).clamp(950.0, 1050.0);
        self.battery = (self.battery - r.random_range(0.0..0.0005)).max(2.8);
        if r.random_bool(if self.door_open { 0.3 } else { 0.02 }) {
            self.door_open = !self.door_open;
        }
        let p = &self.prefix;
        let plain = |topic: &str, payload: String| Message {
            topic: format!("{p}/{topic}"),
            payload,
            samples: 1,
        };
        vec![
            plain(
                "temperature_celsius",
                format!("{:.2}", round_to(self.temperature, 2)),
            ),
            plain(
                "humidity_percent",
                format!("{:.1}", round_to(self.humidity, 1)),
            ),
            plain("energy_wh_total", format!("{:.0}", self.energy_wh.floor())),
            Message {
                topic: format!("{p}/env"),
                payload: format!(
                    r#"{{"ts":{now_ms},"pressure_hpa":{:.1},"battery_volts":{:.3},"door_open":{}}}"#,
                    round_to(self.pressure, 1),
                    round_to(self.battery, 3),
                    self.door_open
                ),
                samples: 3,
            },
        ]
    }
}

/// One MQTT publish and the number of samples the edge agent makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    topic: String,
    payload: String,
    samples: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Runs the fleet until `shutdown` resolves.
pub async fn run(
    config: FleetConfig,
    stats: Arc<FleetStats>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..config.devices {
        let cfg = config.clone();
        let stats = stats.clone();
        tasks.spawn(async move { device_loop(i, cfg, stats).await });
    }
    shutdown.await;
    tasks.shutdown().await;
}

async fn device_loop(index: usize, cfg: FleetConfig, stats: Arc<FleetStats>) {
    let mut device = Device::new(index, cfg.sites, cfg.seed);
    let mut opts = MqttOptions::new(format!("sim-dev{index}"), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let poll_stats = stats.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(_)) | Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    poll_stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(device = index, error = %e, "mqtt connection error, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    // Spread devices over the interval so the broker sees a steady stream, not bursts.
    let phase = cfg.interval.mul_f64(device.rng.random_range(0.0..1.0));
    tokio::time::sleep(phase).await;
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for m in device.tick(now_ms()) {
            match client.publish(m.topic, cfg.qos, false, m.payload).await {
                Ok(()) => {
                    stats.messages.fetch_add(1, Ordering::Relaxed);
                    stats.samples.fetch_add(m.samples, Ordering::Relaxed);
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// QoS from its number (0, 1, anything else → 2).
pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl FleetStats {
    pub fn summary(&self) -> String {
        format!(
            "published {} messages ({} samples), {} errors",
            self.messages.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_deterministic_and_rounded() {
        let mut a = Device::new(7, 3, 1);
        let mut b = Device::new(7, 3, 1);
        let ta = a.tick(1_700_000_000_000);
        assert_eq!(ta, b.tick(1_700_000_000_000));
        assert_eq!(ta[0].topic, "site1/dev7/temperature_celsius");
        let t: f64 = ta[0].payload.parse().expect("number");
        assert_eq!(format!("{t:.2}"), ta[0].payload);
        assert!(ta[3].payload.starts_with(r#"{"ts":1700000000000,"#));
        let mut c = Device::new(8, 3, 1);
        assert_ne!(c.tick(1_700_000_000_000), ta);
    }
}

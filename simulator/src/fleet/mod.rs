//! Simulated device fleets publishing over MQTT (`simulator fleet`).
//!
//! - [`plan`]: what each device publishes and when, a pure function of the options: the
//!   reference datasets' devices ([`crate::datasets`]), anomaly injection, offline periods, and
//!   the topic/payload layout the edge agent's default rule maps to series.
//! - [`connection`]: one MQTT 3.1.1 or 5 connection (rumqttc, optional TLS on ring), and the
//!   bookkeeping of what was written and acknowledged.
//! - [`stats`]: counters, the progress line and the summary table.
//! - [`classic`]: the small fixed-shape fleet the demo runs (`FleetConfig`, [`run`]).
//!
//! # Connections
//!
//! Devices are spread round-robin over a bounded number of connections (`--connections`,
//! default one per device up to [`DEFAULT_MAX_CONNECTIONS`]): device `i` uses connection
//! `i mod C`. Each connection is one task that merges its devices' messages in due order and
//! publishes them at `start + (due − dataset start) / speed` of the wall clock, plus the task
//! that polls its rumqttc event loop. So ten thousand devices cost ten thousand small
//! generators and C sockets, not ten thousand sockets; a broker sees each connection as a
//! gateway speaking for its devices. A task that falls behind publishes as fast as the
//! connection takes it (rumqttc's bounded request channel and in-flight window push back).
//! With several QoS levels (`--qos 0,1,2`), connection `k` uses the `k mod n`-th.
//!
//! # Determinism
//!
//! The bytes of every message (topic and payload, timestamps included) depend only on the
//! dataset, device count, seed, dataset start (`--start`, printed at start-up and in the
//! summary), `--metrics`, the anomaly and the offline options; never on the connection count,
//! the wall clock, the speed or the broker. When a message is published depends on the wall
//! clock.

pub mod classic;
pub mod connection;
pub mod plan;
pub mod stats;

pub use classic::{FleetConfig, FleetStats, qos, run};

use connection::{ConnectOptions, Connection};
use plan::{Merged, PlanCounts, PlanOptions};
use stats::{FleetCounters, RunInfo, Summary};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Connections when `--connections` is not given: one per device up to this many.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;

/// Everything `simulator fleet` needs.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub plan: PlanOptions,
    pub connect: ConnectOptions,
    /// Number of MQTT connections (at least 1, at most one per device).
    pub connections: usize,
    /// QoS per connection, cycled.
    pub qos: Vec<u8>,
    /// Dataset milliseconds per wall-clock millisecond.
    pub speed: f64,
    /// Stop after this long (wall clock); `None`: at the stop signal or the plan's end.
    pub duration: Option<Duration>,
    /// After stopping, how long to wait for outstanding acknowledgements.
    pub drain_timeout: Duration,
    /// Show the progress line (stderr, only on a terminal).
    pub progress: bool,
}

/// Runs the fleet until `stop` resolves, `duration` passes or the plan ends, waits for
/// outstanding acknowledgements, and returns the summary.
pub async fn simulate(
    options: FleetOptions,
    stop: impl Future<Output = ()> + Send,
) -> anyhow::Result<Summary> {
    let counters = Arc::new(FleetCounters::default());
    let devices = options.plan.devices;
    let connections = options
        .connections
        .clamp(1, usize::try_from(devices.max(1)).unwrap_or(usize::MAX));
    let qos_levels = if options.qos.is_empty() {
        vec![1]
    } else {
        options.qos.clone()
    };
    let speed = if options.speed > 0.0 && options.speed.is_finite() {
        options.speed
    } else {
        1.0
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..connections {
        let task = ConnectionTask {
            number: k,
            plan: options.plan.clone(),
            connect: options.connect.clone(),
            qos: qos_levels[k % qos_levels.len()],
            devices: (k as u64..devices).step_by(connections).collect(),
            counters: counters.clone(),
            t0,
            speed,
            stop: stop_rx.clone(),
            drain_timeout: options.drain_timeout,
        };
        tasks.spawn(task.run());
    }

    let bar = options
        .progress
        .then(|| {
            use std::io::IsTerminal;
            std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::with_draw_target(
                    None,
                    indicatif::ProgressDrawTarget::stderr(),
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            })
        })
        .flatten();

    let deadline = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    tokio::pin!(deadline);
    let mut refresh = tokio::time::interval(Duration::from_millis(250));
    let mut plan_counts = PlanCounts::default();
    let mut publishing_time = None;
    loop {
        tokio::select! {
            _ = &mut stop, if publishing_time.is_none() => {
                publishing_time = Some(t0.elapsed());
                let _ = stop_tx.send(true);
            }
            _ = &mut deadline, if publishing_time.is_none() => {
                publishing_time = Some(t0.elapsed());
                let _ = stop_tx.send(true);
            }
            _ = refresh.tick() => {
                if let Some(bar) = &bar {
                    bar.set_message(counters.progress(t0.elapsed(), connections));
                }
            }
            done = tasks.join_next() => match done {
                Some(Ok(counts)) => plan_counts.add(&counts),
                Some(Err(e)) => anyhow::bail!("a connection task failed: {e}"),
                None => break,
            },
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let info = RunInfo {
        dataset: options.plan.dataset.name().to_owned(),
        devices,
        seed: options.plan.seed,
        start_ms: options.plan.start_ms,
        connections,
        mqtt_version: options.connect.version.name().to_owned(),
        qos_levels: {
            let mut q = qos_levels.clone();
            q.truncate(connections);
            q.sort_unstable();
            q.dedup();
            q
        },
    };
    Ok(Summary::new(
        info,
        &counters,
        &plan_counts,
        publishing_time.unwrap_or_else(|| t0.elapsed()),
    ))
}

struct ConnectionTask {
    number: usize,
    plan: PlanOptions,
    connect: ConnectOptions,
    qos: u8,
    devices: Vec<u64>,
    counters: Arc<FleetCounters>,
    t0: Instant,
    speed: f64,
    stop: watch::Receiver<bool>,
    drain_timeout: Duration,
}

impl ConnectionTask {
    /// When a message due at dataset time `due_ms` is published.
    fn wall(&self, due_ms: i64) -> Instant {
        let dataset_ms = (due_ms - self.plan.start_ms).max(0) as f64;
        self.t0 + Duration::from_secs_f64(dataset_ms / self.speed / 1000.0)
    }

    async fn run(self) -> PlanCounts {
        let conn = Connection::start(&self.connect, self.number, self.qos, self.counters.clone());
        let mut messages = Merged::new(&self.plan, self.devices.iter().copied());
        let mut stop = self.stop.clone();
        'publish: while let Some(due) = messages.peek_due() {
            if *stop.borrow() {
                break;
            }
            let at = self.wall(due);
            if at > Instant::now() {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = stop.wait_for(|s| *s) => break 'publish,
                }
            }
            let Some(p) = messages.next() else { break };
            tokio::select! {
                _ = conn.publish(p.topic, p.payload, p.samples) => {}
                _ = stop.wait_for(|s| *s) => break 'publish,
            }
        }
        let counts = messages.counts();
        let deadline = Instant::now() + self.drain_timeout;
        while conn.outstanding() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        conn.close().await;
        counts
    }
}

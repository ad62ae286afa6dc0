//! kill -9 loop: a real `core-node` under continuous ingest is killed with SIGKILL and
//! restarted at random moments, again and again. Afterwards the core holds exactly what was
//! published: no acknowledged sample lost, no phantom sample.
//!
//! The agent drops data from its buffer only after the core's durable ack, and it is never
//! killed here, so once it has drained, "everything published is there" is the same as "every
//! acknowledged sample survived every kill".
//!
//! - Four `mosquitto_pub -l` clients (QoS 1), one per device, publish JSON lines
//!   `{"ts":<ms>,"v":<value>}` from a writer thread: unique timestamps one second apart from
//!   2021-01-01, and `v = ts * 7 + device index`, so a sample that lands in the wrong series or
//!   at the wrong time cannot match by accident.
//! - The main thread waits until the agent has had one more batch acknowledged by the current
//!   core (so every kill hits a node that is ingesting), sleeps a random 100–1500 ms and kills
//!   and restarts the core.
//! - Then it stops publishing, waits until the agent has buffered every published sample and
//!   has nothing unacknowledged, and reads every sample of every series back with one range
//!   selector wide enough to catch samples at any time from 2011 to 2031.
//!
//! Knobs (environment):
//! - `UPDRAFT_KILL_SEED=<u64>` replays the kill timings of a failed run (the seed is printed).
//! - `UPDRAFT_SOAK_CYCLES=<n>` runs `n` kill cycles instead of the CI default of 20. The soak:
//!   `UPDRAFT_SOAK_CYCLES=500 cargo test -p updraft-tests --test core_kill9_loop -- --nocapture`

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use updraft_tests::*;

/// Kill cycles when `UPDRAFT_SOAK_CYCLES` is not set.
const CI_CYCLES: u32 = 20;
const DEVICES: usize = 4;
/// 2021-01-01T00:00:00Z: all data is in the past.
const T0_MS: i64 = 1_609_459_200_000;
const STEP_MS: i64 = 1000;
/// Rounds (one message per device) per second of wall time.
const ROUNDS_PER_SEC: f64 = 100.0;
const KILL_DELAY_MS: (u64, u64) = (100, 1500);
/// How long a restarted core may take to acknowledge its first batch. Generous: today the
/// agent only notices that its connection went to a killed core when its 15 s exchange timeout
/// fires, then backs off and reconnects.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(45);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

const ACKED: &str = "updraft_edge_samples_acked_total";

fn topic(device: usize) -> String {
    format!("site1/d{device}/stream")
}

fn ts_ms(round: u64) -> i64 {
    T0_MS + round as i64 * STEP_MS
}

/// Exactly representable in f64: ts * 7 stays far below 2^53.
fn value(device: usize, ts_ms: i64) -> f64 {
    (ts_ms * 7 + device as i64) as f64
}

/// xorshift64*: enough randomness for kill timings, and replayable from its seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `lo..=hi` for `hi - lo` far below 2^64.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    Some(
        raw.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw:?} is not a non-negative integer")),
    )
}

#[test]
fn core_killed_and_restarted_in_a_loop_loses_no_acked_sample_and_invents_none() {
    let seed = env_u64("UPDRAFT_KILL_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        nanos ^ u64::from(std::process::id()).rotate_left(32)
    });
    let cycles = env_u64("UPDRAFT_SOAK_CYCLES").map_or(CI_CYCLES, |n| n as u32);
    eprintln!("kill -9 loop: {cycles} cycles, UPDRAFT_KILL_SEED={seed}");
    let work = tempfile::tempdir().expect("creating a temporary directory");
    if let Err(e) = run(work.path(), seed, cycles) {
        // Keep the data directories and full logs of a failure for a post-mortem.
        let kept = work.keep();
        panic!(
            "{e:#}\n\nreplay: UPDRAFT_KILL_SEED={seed} UPDRAFT_SOAK_CYCLES={cycles} \
             cargo test -p updraft-tests --test core_kill9_loop -- --nocapture\n\
             data and logs kept in {}\n\n{}",
            kept.display(),
            log_tails(&kept)
        );
    }
}

fn run(work: &Path, seed: u64, cycles: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    let certs = work.join("certs");
    make_certs(&certs)?;
    let core = Core::start(work, &certs)?;
    let agent = Agent::start(work, &certs, core.quic, &[])?;

    let publishers = (0..DEVICES)
        .map(|d| {
            LinePublisher::start(
                agent.mqtt_port,
                &topic(d),
                work.join(format!("pub-d{d}.log")),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut publishers = publishers;
            let rounds = publish_until(&mut publishers, &stop);
            (publishers, rounds)
        })
    };

    let killed = kill_loop(core, &agent, cycles, &mut XorShift::new(seed));

    stop.store(true, Ordering::Relaxed);
    let (mut publishers, rounds) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    // A publisher that died starves the kill loop: its error is the cause, report it first.
    let rounds = rounds?;
    let (core, recovery) = killed?;
    for p in &mut publishers {
        p.finish(Duration::from_secs(30))?;
    }

    let published = rounds * DEVICES as u64;
    wait_until_drained(&agent, published)?;
    verify_contents(&core, rounds)?;

    let ready = core.process.log_text().matches("core node ready").count();
    if ready != cycles as usize + 1 {
        bail!(
            "the core log shows {ready} starts, expected {} (1 + {cycles} restarts)",
            cycles + 1
        );
    }
    let failed_deliveries = agent.metric("updraft_edge_uplink_errors_total");
    let max_recovery = recovery.iter().max().copied().unwrap_or_default();
    let mean_recovery = recovery.iter().sum::<Duration>() / recovery.len().max(1) as u32;
    eprintln!(
        "kill -9 loop: {cycles} kills, {published} samples in {DEVICES} series all back exactly, \
         {failed_deliveries} failed deliveries, first ack after restart mean {mean_recovery:.1?} max \
         {max_recovery:.1?}, {:.1?} wall time (UPDRAFT_KILL_SEED={seed})",
        started.elapsed()
    );
    Ok(())
}

/// Publishes rounds (one line per device, all with the round's timestamp) at
/// [`ROUNDS_PER_SEC`] until `stop`; returns how many whole rounds went out.
fn publish_until(publishers: &mut [LinePublisher], stop: &AtomicBool) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut rounds = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * ROUNDS_PER_SEC) as u64;
        while rounds < due {
            let ts = ts_ms(rounds);
            for (device, p) in publishers.iter_mut().enumerate() {
                p.send(&format!(r#"{{"ts":{ts},"v":{}}}"#, value(device, ts)))?;
            }
            rounds += 1;
        }
        // Pacing, not synchronisation.
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(rounds)
}

/// Kills and restarts the core `cycles` times. Returns the last core and, per restart, how
/// long the first acknowledgement took.
fn kill_loop(
    mut core: Core,
    agent: &Agent,
    cycles: u32,
    rng: &mut XorShift,
) -> anyhow::Result<(Core, Vec<Duration>)> {
    let mut recovery = Vec::with_capacity(cycles as usize);
    let mut up_since = Instant::now();
    for cycle in 1..=cycles {
        // Every kill hits a node that has acknowledged at least one batch of its own.
        let baseline = agent.metric(ACKED);
        wait_for(
            &format!("an acknowledged batch before kill {cycle} (acked: {baseline})"),
            FIRST_ACK_TIMEOUT,
            || (agent.metric(ACKED) > baseline).then_some(()),
        )?;
        if cycle > 1 {
            recovery.push(up_since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(
            rng.between(KILL_DELAY_MS.0, KILL_DELAY_MS.1),
        ));
        core = core
            .restart_after_kill9()
            .with_context(|| format!("restarting the core after kill {cycle}"))?;
        up_since = Instant::now();
    }
    Ok((core, recovery))
}

/// Waits until the agent has buffered every published sample and has nothing unacknowledged.
///
/// Not "acked >= shipped": a retryable answer (`too_many_requests`) counts as shipped but not
/// acked, so that can stay false with nothing lost. An empty buffer with nothing dropped is
/// what proves every buffered sample was acknowledged.
fn wait_until_drained(agent: &Agent, published: u64) -> anyhow::Result<()> {
    let mut last = String::new();
    let drained = wait_for("the agent to drain its buffer", DRAIN_TIMEOUT, || {
        let m = agent.metrics();
        let get = |name| metric_sum(&m, name, None);
        let (received, buffered, buffer_bytes, acked, shipped, dropped, rejected) = (
            get("updraft_edge_samples_received_total"),
            get("updraft_edge_samples_buffered_total"),
            get("updraft_edge_buffer_bytes"),
            get(ACKED),
            get("updraft_edge_samples_shipped_total"),
            get("updraft_edge_samples_dropped_total"),
            get("updraft_edge_messages_rejected_total"),
        );
        last = format!(
            "published {published}, received {received}, rejected messages {rejected}, \
             buffered {buffered}, unacked buffer bytes {buffer_bytes}, shipped {shipped}, \
             acked {acked}, dropped {dropped}"
        );
        let p = published as f64;
        (received == p && buffered == p && buffer_bytes == 0.0 && acked >= p && dropped == 0.0)
            .then_some(())
    });
    drained.with_context(|| format!("agent counters: {last}"))
}

/// Reads every sample of every series back and compares with what was published.
fn verify_contents(core: &Core, rounds: u64) -> anyhow::Result<()> {
    let got = read_everything(core, ts_ms(rounds.saturating_sub(1)))?;
    let mut problems = Vec::new();
    let mut seen = [false; DEVICES];
    for (labels, points) in &got {
        let Some(device) = (0..DEVICES).find(|&d| *labels == series_labels(d)) else {
            problems.push(format!(
                "phantom series {labels:?} with {} samples, first {:?}",
                points.len(),
                &points[..points.len().min(3)]
            ));
            continue;
        };
        seen[device] = true;
        if let Some(p) = compare(device, rounds, points) {
            problems.push(p);
        }
    }
    for (device, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
        problems.push(format!(
            "series d{device} missing entirely ({rounds} samples published)"
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the core's contents differ from what was published ({rounds} samples per series, \
             ts {T0_MS}..={} step {STEP_MS} ms, v = ts * 7 + device):\n  {}",
            ts_ms(rounds.saturating_sub(1)),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// A series' labels, `__name__` included.
type Labels = BTreeMap<String, String>;

fn series_labels(device: usize) -> Labels {
    [
        ("__name__", "stream_v".to_owned()),
        ("site", "site1".to_owned()),
        ("device", format!("d{device}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Every stored sample of every series from ten years before the first published timestamp to
/// ten years after it, read with `{__name__=~".+"}[<width>]` over adjacent windows
/// `(a, b]` (a range selector's window is left-open, so each sample is read exactly once).
/// The published span is cut into six-hour windows to keep each answer a few MB (the HTTP
/// client reads at most 10 MB); the years around it, which should be empty, are one window
/// each.
fn read_everything(
    core: &Core,
    last_ts_ms: i64,
) -> anyhow::Result<BTreeMap<Labels, Vec<(i64, f64)>>> {
    const TEN_YEARS_MS: i64 = 10 * 365 * 86_400_000;
    const WINDOW_MS: i64 = 6 * 3_600_000;
    let mut bounds = vec![T0_MS - 1 - TEN_YEARS_MS, T0_MS - 1];
    while let Some(&b) = bounds.last().filter(|&&b| b < last_ts_ms) {
        bounds.push(b + WINDOW_MS);
    }
    bounds.push(T0_MS + TEN_YEARS_MS);

    let mut all: BTreeMap<_, Vec<(i64, f64)>> = BTreeMap::new();
    for w in bounds.windows(2) {
        let (a, b) = (w[0], w[1]);
        let promql = format!(r#"{{__name__=~".+"}}[{}]"#, promql_duration(b - a));
        let answer = core
            .query(&promql, Some(b as f64 / 1000.0))
            .with_context(|| format!("reading back ({a}, {b}] ms"))?;
        for series in matrix_series(&answer)? {
            all.entry(series.labels)
                .or_default()
                .extend(series.points_ms);
        }
    }
    Ok(all)
}

/// `ms` as a PromQL duration. Not plain `<n>ms`: promql-parser reads each unit's number as a
/// u32 and takes an overflow for zero.
fn promql_duration(ms: i64) -> String {
    match (ms / 1000, ms % 1000) {
        (s, 0) => format!("{s}s"),
        (0, ms) => format!("{ms}ms"),
        (s, ms) => format!("{s}s{ms}ms"),
    }
}

/// A description of how `points` differ from the `rounds` samples published for `device`.
fn compare(device: usize, rounds: u64, points: &[(i64, f64)]) -> Option<String> {
    let mut got: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for &(t, v) in points {
        got.entry(t).or_default().push(v);
    }
    let expected: BTreeMap<i64, f64> = (0..rounds)
        .map(|r| (ts_ms(r), value(device, ts_ms(r))))
        .collect();

    let missing: Vec<i64> = expected
        .keys()
        .filter(|t| !got.contains_key(t))
        .copied()
        .collect();
    let mut wrong = Vec::new();
    let mut phantom = Vec::new();
    for (t, values) in &got {
        match expected.get(t) {
            None => phantom.extend(values.iter().map(|v| (*t, *v))),
            Some(want) if values.len() != 1 || values[0].to_bits() != want.to_bits() => {
                wrong.push(format!("ts {t}: want {want}, got {values:?}"));
            }
            Some(_) => {}
        }
    }
    if missing.is_empty() && wrong.is_empty() && phantom.is_empty() {
        return None;
    }
    Some(format!(
        "d{device}: {} samples returned; {} missing (lost acked samples) {}; \
         {} with a wrong or repeated value {:?}; {} phantom {:?}",
        points.len(),
        missing.len(),
        describe_ranges(&missing),
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        phantom.len(),
        &phantom[..phantom.len().min(5)],
    ))
}

/// Timestamps as runs (`[a..=b (n), ...]`), at most ten of them, to make gaps readable.
fn describe_ranges(ts: &[i64]) -> String {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &t in ts {
        match runs.last_mut() {
            Some((_, end)) if t == *end + STEP_MS => *end = t,
            _ => runs.push((t, t)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(10)
        .map(|(a, b)| format!("{a}..={b} ({})", (b - a) / STEP_MS + 1))
        .collect();
    let more = runs.len().saturating_sub(10);
    if more > 0 {
        format!("[{}, and {more} more runs]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

/// The last lines of the core's and the agent's logs.
fn log_tails(work: &Path) -> String {
    let tail = |name: &str| {
        let text = std::fs::read_to_string(work.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "----- last lines of {name} -----\n{}",
            lines[from..].join("\n")
        )
    };
    format!("{}\n{}", tail("core.log"), tail("agent.log"))
}

use super::*;
use crate::datasets::{DAY_MS, DEFAULT_START_MS, generate_entity};

fn options(dataset: Dataset, devices: u64) -> PlanOptions {
    let mut o = PlanOptions::new(dataset, devices, 1, DEFAULT_START_MS);
    o.duration_ms = Some(DAY_MS);
    o
}

fn ticks(o: &PlanOptions, device: u64) -> Vec<DeviceTick> {
    DeviceScript::new(o, device).collect()
}

fn with_kinds(mut o: PlanOptions, kinds: &str) -> PlanOptions {
    o.anomalies = Anomalies {
        kinds: AnomalyKinds::parse(kinds).expect("valid kinds"),
        rate: 0.002,
        ticks: 20,
    };
    o
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let mut o = options(Dataset::SensorMix, 25);
    o.duration_ms = Some(3_600_000);
    o.anomalies = Anomalies {
        kinds: AnomalyKinds::parse("all").expect("all"),
        rate: 0.01,
        ticks: 5,
    };
    o.offline = Offline {
        fraction: 0.2,
        mean_ms: 120_000,
        backlog: true,
    };
    let a: Vec<Publish> = Merged::new(&o, 0..25).collect();
    let b: Vec<Publish> = Merged::new(&o, 0..25).collect();
    assert!(a.len() > 1000, "{} messages", a.len());
    assert_eq!(a, b);
    let other: Vec<Publish> = Merged::new(&o.clone_with_seed(2), 0..25).collect();
    assert_ne!(a, other);
    // Due order across the fleet.
    assert!(a.windows(2).all(|w| w[0].due_ms <= w[1].due_ms));
    // A device does the same whatever the fleet and whichever devices share its connection.
    let alone: Vec<Publish> = Merged::new(&o, [7]).collect();
    let in_fleet: Vec<Publish> = a.iter().filter(|p| p.device == 7).cloned().collect();
    assert_eq!(alone, in_fleet);
}

impl PlanOptions {
    fn clone_with_seed(&self, seed: u64) -> Self {
        Self {
            seed,
            ..self.clone()
        }
    }
}

#[test]
fn without_anomalies_the_fleet_publishes_the_dataset() {
    for dataset in Dataset::ALL {
        let mut o = options(dataset, 3);
        o.duration_ms = Some(600_000);
        let spec = DatasetSpec::new(dataset, 3, 600_000);
        let series = generate_entity(&spec, 2);
        let got = ticks(&o, 2);
        assert_eq!(got.len(), series[0].samples.len(), "{dataset}");
        for (t, tick) in got.iter().enumerate() {
            assert_eq!(tick.values.len(), series.len());
            for (s, v) in series.iter().zip(&tick.values) {
                assert_eq!(s.samples[t].timestamp_ms, tick.timestamp_ms);
                assert_eq!(s.samples[t].value.to_bits(), v.to_bits(), "{dataset}");
            }
        }
    }
}

#[test]
fn topics_and_payloads_map_to_the_documented_series() {
    let o = options(Dataset::SensorMix, 4);
    let first: Vec<Publish> = DeviceMessages::new(&o, 3).take(2).collect();
    assert_eq!(first[0].topic, "site_0/sensor_3/sensors");
    let text = String::from_utf8(first[0].payload.clone()).expect("utf-8");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let keys: Vec<&str> = json
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(text.starts_with("{\"ts\":17040672"), "{text}");
    for k in [
        "temperature_celsius",
        "humidity_percent",
        "energy_wh_total",
        "door_open",
        "vibration_rms",
        "battery_volts",
    ] {
        assert!(keys.contains(&k), "{k} in {text}");
    }
    assert_eq!(first[0].samples, 8);

    // Trucks: two measurements per tick, the dataset's own metric names under the default rule.
    let o = options(Dataset::IotTrucks, 1);
    let m: Vec<Publish> = DeviceMessages::new(&o, 0).take(2).collect();
    assert!(m[0].topic.ends_with("/truck_0/readings"), "{}", m[0].topic);
    assert!(m[1].topic.ends_with("/truck_0/diagnostics"));
    assert_eq!(m[0].samples + m[1].samples, 10);

    // metrics-mix: every one of the 73 series gets its own key.
    let o = options(Dataset::MetricsMix, 1);
    let m = DeviceMessages::new(&o, 0).next().expect("a message");
    assert_eq!(m.topic, "node/host-0:9100/prometheus");
    let json: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(json.as_object().map(|o| o.len()), Some(73 + 1));
    assert!(json.get("node_cpu_seconds_total_cpu_0_mode_idle").is_some());

    // --metrics keeps the first M series.
    let mut o = options(Dataset::SensorMix, 1);
    o.metrics = Some(2);
    let m = DeviceMessages::new(&o, 0).next().expect("a message");
    assert_eq!(m.samples, 2);
}

/// (tick index, series) of every value that differs from the plain dataset.
fn differences(base: &[DeviceTick], got: &[DeviceTick]) -> Vec<(usize, usize, f64, f64)> {
    assert_eq!(base.len(), got.len());
    let mut d = Vec::new();
    for (t, (b, g)) in base.iter().zip(got).enumerate() {
        assert_eq!(b.timestamp_ms, g.timestamp_ms);
        for (s, (x, y)) in b.values.iter().zip(&g.values).enumerate() {
            if x.to_bits() != y.to_bits() {
                d.push((t, s, *x, *y));
            }
        }
    }
    d
}

#[test]
fn spikes_change_single_values_by_ten_times_their_size() {
    let base = ticks(&options(Dataset::SensorMix, 4), 3);
    let o = with_kinds(options(Dataset::SensorMix, 4), "spikes");
    let mut script = DeviceScript::new(&o, 3);
    let got: Vec<DeviceTick> = script.by_ref().collect();
    let d = differences(&base, &got);
    assert!(!d.is_empty());
    assert_eq!(d.len() as u64, script.counts.anomalies[0]);
    for (_, _, before, after) in d {
        let jump = (after - before).abs();
        let expected = 10.0 * (before.abs() + 1.0);
        assert!(
            (jump - expected).abs() < 1e-9 * expected,
            "{before} -> {after}"
        );
    }
}

#[test]
fn stuck_series_repeat_one_value_for_an_episode() {
    let base = ticks(&options(Dataset::SensorMix, 4), 3);
    let o = with_kinds(options(Dataset::SensorMix, 4), "stuck");
    let mut script = DeviceScript::new(&o, 3);
    let got: Vec<DeviceTick> = script.by_ref().collect();
    let episodes = script.counts.anomalies[2];
    assert!(episodes > 0);
    // Each episode: `ticks` consecutive ticks of one series holding the value of its first.
    let d = differences(&base, &got);
    assert!(!d.is_empty());
    for &(t, s, _, after) in &d {
        let mut first = t;
        while first > 0 && got[first - 1].values[s].to_bits() == after.to_bits() {
            first -= 1;
        }
        if s == 6 {
            // Full-precision noise never repeats by chance: the run is the episode.
            assert!(t - first < 20, "stuck for more than 20 ticks at {t}");
        }
        assert_eq!(base[first].values[s].to_bits(), after.to_bits());
    }
    // A stuck vibration (full-precision noise) cannot repeat by chance, so count its runs.
    let vib_runs = got
        .windows(2)
        .filter(|w| w[0].values[6] == w[1].values[6])
        .count();
    assert!(vib_runs as u64 <= episodes * 19);
}

#[test]
fn drifts_grow_linearly_then_snap_back() {
    let base = ticks(&options(Dataset::SensorMix, 4), 3);
    let o = with_kinds(options(Dataset::SensorMix, 4), "drifts");
    let got = ticks(&o, 3);
    let d = differences(&base, &got);
    assert!(!d.is_empty());
    // Group consecutive ticks of one series into episodes and check offset = k × step.
    let mut i = 0;
    let mut episodes = 0;
    while i < d.len() {
        let (t0, s, b0, a0) = d[i];
        let step = a0 - b0;
        let mut k = 1.0;
        let mut j = i + 1;
        while j < d.len() && d[j].0 == d[j - 1].0 + 1 && d[j].1 == s {
            k += 1.0;
            let offset = d[j].3 - d[j].2;
            assert!(
                (offset - k * step).abs() < 1e-6 * (k * step).abs().max(1.0),
                "tick {}: offset {offset}, step {step}",
                d[j].0
            );
            j += 1;
        }
        assert!(k <= 20.0, "drift of {k} ticks at {t0}");
        episodes += 1;
        i = j;
    }
    assert!(episodes > 0);
    // After the last drifted tick the series is the dataset's again.
    let (t_last, s_last, ..) = d[d.len() - 1];
    if t_last + 1 < base.len() {
        assert_eq!(
            base[t_last + 1].values[s_last].to_bits(),
            got[t_last + 1].values[s_last].to_bits()
        );
    }
}

#[test]
fn silent_devices_skip_ticks_and_skewed_clocks_shift_timestamps() {
    let base = ticks(&options(Dataset::SensorMix, 4), 3);
    let o = with_kinds(options(Dataset::SensorMix, 4), "silent");
    let mut script = DeviceScript::new(&o, 3);
    let got: Vec<DeviceTick> = script.by_ref().collect();
    assert!(script.counts.silenced_ticks > 0);
    assert_eq!(
        got.len() as u64 + script.counts.silenced_ticks,
        base.len() as u64
    );
    assert_eq!(
        script.counts.silenced_ticks,
        script.counts.anomalies[3] * 20,
        "whole episodes (none cut by the end of the day here)"
    );

    let o = with_kinds(options(Dataset::SensorMix, 4), "skew");
    let got = ticks(&o, 3);
    assert_eq!(got.len(), base.len());
    let shifted: Vec<i64> = base
        .iter()
        .zip(&got)
        .map(|(b, g)| {
            assert_eq!(b.values, g.values);
            assert_eq!(
                b.due_ms, g.due_ms,
                "a wrong clock does not change when it sends"
            );
            g.timestamp_ms - b.timestamp_ms
        })
        .filter(|&d| d != 0)
        .collect();
    assert!(!shifted.is_empty());
    assert!(shifted.iter().all(|d| (5_000..=300_000).contains(&d.abs())));
}

#[test]
fn anomaly_kinds_do_not_move_each_other() {
    // Spikes land on the same ticks whether or not the other kinds are on (stuck and drift may
    // change the value a spike is added to, so compare where, not how much).
    let base = ticks(&options(Dataset::SensorMix, 4), 5);
    let spikes = ticks(&with_kinds(options(Dataset::SensorMix, 4), "spikes"), 5);
    let both = ticks(
        &with_kinds(options(Dataset::SensorMix, 4), "spikes,skew"),
        5,
    );
    let at = |got: &[DeviceTick]| -> Vec<(usize, usize)> {
        differences(&base, got)
            .into_iter()
            .map(|(t, s, ..)| (t, s))
            .collect()
    };
    let with_skew: Vec<DeviceTick> = both
        .into_iter()
        .zip(&base)
        .map(|(mut g, b)| {
            g.timestamp_ms = b.timestamp_ms;
            g
        })
        .collect();
    assert_eq!(at(&spikes), at(&with_skew));
}

#[test]
fn offline_periods_leave_gaps_or_come_back_as_a_backlog() {
    let plain = options(Dataset::SensorMix, 4);
    let base = ticks(&plain, 3);
    let interval = base[1].timestamp_ms - base[0].timestamp_ms;
    let mut o = plain.clone();
    o.offline = Offline {
        fraction: 0.25,
        mean_ms: 600_000,
        backlog: false,
    };
    let mut script = DeviceScript::new(&o, 3);
    let got: Vec<DeviceTick> = script.by_ref().collect();
    let dropped = script.counts.offline_dropped_ticks;
    assert_eq!(got.len() as u64 + dropped, base.len() as u64);
    // About a quarter of the day is offline (a generous band: a day holds ~36 stretches).
    let share = dropped as f64 / base.len() as f64;
    assert!((0.08..0.45).contains(&share), "offline share {share}");
    let gaps = got
        .windows(2)
        .filter(|w| w[1].timestamp_ms - w[0].timestamp_ms > interval)
        .count();
    assert!(gaps >= 5, "{gaps} gaps");

    // With the backlog: every tick arrives, those taken offline late and in a burst, each with
    // its original timestamp and value.
    o.offline.backlog = true;
    let mut script = DeviceScript::new(&o, 3);
    let got: Vec<DeviceTick> = script.by_ref().collect();
    assert_eq!(got.len(), base.len());
    assert_eq!(script.counts.offline_backlogged_ticks, dropped);
    assert!(got.windows(2).all(|w| w[0].due_ms <= w[1].due_ms));
    for (b, g) in base.iter().zip(&got) {
        assert_eq!(b.timestamp_ms, g.timestamp_ms);
        assert_eq!(b.values, g.values);
    }
    let late = got.iter().filter(|t| t.due_ms > t.timestamp_ms).count() as u64;
    assert_eq!(late, dropped);
}

#[test]
fn anomaly_names_parse() {
    let k = AnomalyKinds::parse("spikes, skew").expect("valid");
    assert!(k.spikes && k.skew && !k.stuck && !k.drifts && !k.silent);
    assert!(AnomalyKinds::parse("all").expect("all").silent);
    assert!(AnomalyKinds::parse("spokes").is_err());
}

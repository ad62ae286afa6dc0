//! The buffer fills up while the core is down, under each overflow policy: what happens is
//! what `docs/edge-agent.md` says, and every sample given up on is counted on `/metrics`.

use anyhow::Context;
use std::time::Duration;
use updraft_tests::*;

/// 64 KiB segments, 256 KiB bound: 30,000 samples (about 16 bytes each) overflow it.
const BUFFER_ARGS: [&str; 4] = [
    "--buffer-segment-bytes",
    "65536",
    "--buffer-max-bytes",
    "262144",
];
const MESSAGES: i64 = 30_000;

/// Runs one agent whose only rule has `policy`, overflows its buffer with the core down, then
/// brings the core back. Returns (agent metrics after the drain, core).
fn overflow(policy: &str, t0_ms: i64) -> anyhow::Result<(String, Core, tempfile::TempDir)> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let mut core = Core::start(work.path(), &certs)?;
    let config =
        format!("[[rules]]\ntopic = \"{{site}}/{{device}}/{{metric}}\"\noverflow = \"{policy}\"\n");
    let agent = Agent::start_with_config(work.path(), &certs, core.quic, &config, &BUFFER_ARGS)?;
    core.process.kill9();
    let mut publisher = LinePublisher::start(
        agent.mqtt_port,
        "plant/p1/full",
        work.path().join("pub.log"),
    )?;
    for i in 0..MESSAGES {
        publisher.send(&format!(r#"{{"ts":{},"v":{i}}}"#, t0_ms + i * 1000))?;
    }
    publisher.finish(Duration::from_secs(60))?;
    wait_for("every message mapped", Duration::from_secs(30), || {
        (agent.metric("updraft_edge_samples_received_total") >= MESSAGES as f64).then_some(())
    })?;
    core = core.restart_after_kill9()?;
    wait_for("the buffer drained", Duration::from_secs(60), || {
        let m = agent.metrics();
        let buffered = metric_sum(&m, "updraft_edge_buffer_bytes", None);
        let acked = metric_sum(&m, "updraft_edge_samples_acked_total", None);
        (buffered == 0.0 && acked > 0.0).then_some(m)
    })
    .map(|m| (m, core, work))
}

/// The value of `promql` at `at_ms`; a failed query or an answer of several series is an
/// error, an empty answer `None`.
fn value_at(core: &Core, promql: &str, at_ms: i64) -> anyhow::Result<Option<f64>> {
    core.instant_value(promql, Some(at_ms as f64 / 1000.0))
}

/// The raw samples of `full_v` stamped exactly `ts_ms` (a 1 ms window ending there).
fn samples_at(core: &Core, ts_ms: i64) -> anyhow::Result<Vec<(i64, f64)>> {
    Ok(core
        .raw_samples("full_v", "1ms", ts_ms as f64 / 1000.0)?
        .into_iter()
        .flat_map(|s| s.points_ms)
        .collect())
}

fn dropped(m: &str, reason: &str) -> f64 {
    metric_sum(
        m,
        "updraft_edge_samples_dropped_total",
        Some(&format!("reason=\"{reason}\"")),
    )
}

#[test]
fn a_full_buffer_follows_each_rules_policy_and_counts_every_drop() -> anyhow::Result<()> {
    let window = format!("count_over_time(full_v[{}s])", MESSAGES + 10);
    for (policy, reason) in [
        ("reject_new", "buffer_full_reject_new"),
        ("drop_oldest", "buffer_full_drop_oldest"),
        ("downsample_backlog", "buffer_full_downsample"),
    ] {
        let t0_ms: i64 = 1_700_200_000_000;
        let end_ms = t0_ms + MESSAGES * 1000;
        let (m, core, _work) = overflow(policy, t0_ms)?;
        let lost = dropped(&m, reason);
        assert!(lost > 0.0, "{policy}: the buffer never filled: {m}");
        let all_drops = metric_sum(&m, "updraft_edge_samples_dropped_total", None);
        let stored = value_at(&core, &window, end_ms)?
            .with_context(|| format!("{policy}: nothing of full_v stored"))?;
        // Every raw sample that did not reach the core is counted under the policy's reason
        // (downsample_backlog also drops aggregates it wrote earlier, under drop_oldest).
        let raw_lost = if policy == "downsample_backlog" {
            lost
        } else {
            all_drops
        };
        assert!(
            stored <= MESSAGES as f64,
            "{policy}: more stored than sent: {stored}"
        );
        if policy == "reject_new" {
            // Refusing new messages never touches what was delivered: exact.
            assert_eq!(stored + raw_lost, MESSAGES as f64, "{policy}: {m}");
        } else {
            // An evicting policy may count again samples the fresh lane had already
            // delivered from an evicted segment (docs/edge-agent.md, "Buffer full"), so the
            // counts may exceed what is missing; no sample may be missing uncounted.
            assert!(
                stored + raw_lost >= MESSAGES as f64,
                "{policy}: {} samples lost uncounted: {m}",
                MESSAGES as f64 - stored - raw_lost
            );
        }
        // Sample i has value i and timestamp t0 + i s: looked up by its timestamp, so that
        // sample 0 (value 0.0) cannot be mistaken for an empty answer.
        let (first, last) = (samples_at(&core, t0_ms)?, samples_at(&core, end_ms - 1000)?);
        match policy {
            "reject_new" => {
                // The oldest samples were kept, the newest refused.
                assert_eq!(first, [(t0_ms, 0.0)], "{policy}: sample 0 is stored");
                assert_eq!(last, [], "{policy}: the last sample was refused");
            }
            "downsample_backlog" => {
                assert_eq!(
                    last,
                    [(end_ms - 1000, (MESSAGES - 1) as f64)],
                    "{policy}: the last sample is stored"
                );
                assert_eq!(first, [], "{policy}: raw sample 0 was replaced");
                let aggregated = value_at(
                    &core,
                    &format!("sum(sum_over_time(full_v:count_1m[{}s]))", MESSAGES + 10),
                    end_ms,
                )?
                .with_context(|| format!("{policy}: no count_1m aggregate stored"))?;
                // Each replaced sample is in one count_1m, unless that aggregate was itself
                // given up later (counted as drop_oldest).
                let aggregates_lost = dropped(&m, "buffer_full_drop_oldest");
                assert!(
                    aggregated > 0.0 && aggregated <= lost,
                    "{policy}: {aggregated} {lost}"
                );
                assert!(
                    aggregated == lost || aggregates_lost > 0.0,
                    "{policy}: {aggregated} of {lost} replaced samples in counts, none dropped"
                );
            }
            _ => {
                // The newest samples were kept, the oldest given up.
                assert_eq!(
                    last,
                    [(end_ms - 1000, (MESSAGES - 1) as f64)],
                    "{policy}: the last sample is stored"
                );
                assert_eq!(first, [], "{policy}: sample 0 was given up");
            }
        }
    }
    Ok(())
}

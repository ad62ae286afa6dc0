//! Bad input at the edge (non-numeric text, broken JSON, a topic outside the template, a 1 MB
//! payload) is rejected with a counter and a log line; the agent keeps running and every good
//! message around the bad ones arrives.

use std::time::Duration;
use updraft_tests::*;

#[test]
fn malformed_payloads_are_counted_and_good_ones_around_them_arrive() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let certs = work.path().join("certs");
    make_certs(&certs)?;
    let core = Core::start(work.path(), &certs)?;
    let mut agent = Agent::start(work.path(), &certs, core.quic, &[])?;

    let t0_ms: i64 = 1_700_000_000_000;
    let good = |i: i64| format!(r#"{{"ts":{},"v":{i}}}"#, t0_ms + i * 1000);
    let big = vec![b'7'; 1024 * 1024];
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("site1/dev1/temp", b"twenty-one".to_vec(), "not_a_number"),
        (
            "site1/dev1/env",
            br#"{"ts":1,"v":"#.to_vec(),
            "invalid_json",
        ),
        ("just/two", b"1.0".to_vec(), "topic_mismatch"),
        ("a/b/c/d", b"1.0".to_vec(), "topic_mismatch"),
        ("site1/dev1/temp", big, "payload_too_large"),
        (
            "site1/dev1/env",
            br#"{"ts":"yesterday","v":1}"#.to_vec(),
            "invalid_timestamp",
        ),
        (
            "site1/dev1/env",
            br#"{"name":"only text"}"#.to_vec(),
            "no_numeric_fields",
        ),
        ("site1/dev1/temp", vec![0xff, 0xfe, 0x00], "not_a_number"),
    ];
    let mut i = 0i64;
    for (topic, payload, _) in &bad {
        agent.publish("site1/dev9/seq", good(i).as_bytes())?;
        i += 1;
        agent.publish(topic, payload)?;
    }
    agent.publish("site1/dev9/seq", good(i).as_bytes())?;
    let n = i + 1;

    let t0 = t0_ms as f64 / 1000.0;
    let expected: Vec<(f64, f64)> = (0..n).map(|i| (t0 + i as f64, i as f64)).collect();
    core.wait_for_points(
        "seq_v",
        (t0, t0 + (n - 1) as f64, 1.0),
        &expected,
        Duration::from_secs(20),
    )?;

    assert!(agent.process.is_running(), "agent survived the bad input");
    let metrics = agent.metrics();
    for reason in [
        "not_a_number",
        "invalid_json",
        "topic_mismatch",
        "payload_too_large",
        "invalid_timestamp",
        "no_numeric_fields",
    ] {
        let expected = bad.iter().filter(|b| b.2 == reason).count() as f64;
        let counted = metric_sum(
            &metrics,
            "updraft_edge_messages_rejected_total",
            Some(&format!("reason=\"{reason}\"")),
        );
        assert_eq!(
            counted, expected,
            "rejections counted for {reason}\n{metrics}"
        );
    }
    let log = agent.process.log_text();
    assert!(
        log.contains("payload_too_large") || log.contains("too large"),
        "rejections are logged:\n{log}"
    );
    Ok(())
}

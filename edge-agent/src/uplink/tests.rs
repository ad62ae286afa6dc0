//! The uplink against a scripted core: what gets resent, acknowledged or dropped.

use super::*;
use crate::buffer::{self, LogOptions, LogWriter, record};
use protocols::model::{Labels, Sample, Tenant};
use protocols::wire::{ErrorCode, ResumePoint, SeriesSamples, WriteBatch};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// What the scripted core does with the next request.
#[derive(Debug, Clone)]
enum Reply {
    Unreachable,
    Answer(AckOutcome),
    /// An answer for epoch 0, sequence 0: the core refused the frame before reading it.
    Unread(AckOutcome),
}

#[derive(Clone, Default)]
struct ScriptedCore {
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<(String, WriteBatch)>>>,
    /// The answer to a resume query.
    applied: Arc<Mutex<Option<(u64, u64)>>>,
    /// Measured round-trip time per endpoint (unlisted: not measured).
    rtts: Arc<Mutex<HashMap<String, Duration>>>,
    /// Endpoints that do not answer at all: no round-trip time, every exchange fails.
    down: Arc<Mutex<HashSet<String>>>,
}

impl ScriptedCore {
    fn new(script: impl IntoIterator<Item = Reply>) -> Self {
        Self {
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            seen: Arc::default(),
            applied: Arc::default(),
            rtts: Arc::default(),
            down: Arc::default(),
        }
    }

    fn set_rtt(&self, endpoint: &str, ms: u64) {
        let rtt = Duration::from_millis(ms);
        self.rtts.lock().expect("lock").insert(endpoint.into(), rtt);
    }

    fn set_down(&self, endpoint: &str, down: bool) {
        let mut set = self.down.lock().expect("lock");
        if down {
            set.insert(endpoint.into());
        } else {
            set.remove(endpoint);
        }
    }

    /// The endpoint of every batch seen, in order.
    fn endpoints_seen(&self) -> Vec<String> {
        self.seen().into_iter().map(|(e, _)| e).collect()
    }

    fn seen(&self) -> Vec<(String, WriteBatch)> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Transport for ScriptedCore {
    async fn exchange(
        &mut self,
        endpoint: &CoreEndpoint,
        frame: Bytes,
    ) -> Result<Vec<u8>, TransportError> {
        let batch = match Message::decode(&frame) {
            Ok(Message::WriteBatch(batch)) => batch,
            Ok(Message::ResumeQuery(_)) => {
                let applied = *self.applied.lock().expect("lock");
                return Ok(Message::ResumePoint(ResumePoint { applied }).encode());
            }
            _ => panic!("the uplink sent something other than a WriteBatch or ResumeQuery"),
        };
        let (epoch, sequence) = (batch.epoch, batch.sequence);
        let down = self
            .down
            .lock()
            .expect("lock")
            .contains(&endpoint.to_string());
        self.seen
            .lock()
            .expect("lock")
            .push((endpoint.to_string(), batch));
        if down {
            return Err(TransportError::Timeout("connecting"));
        }
        // An exhausted script stores everything.
        let reply = self.script.lock().expect("lock").pop_front();
        match reply.unwrap_or(Reply::Answer(AckOutcome::Duplicate)) {
            Reply::Unreachable => Err(TransportError::Timeout("connecting")),
            Reply::Answer(outcome) => Ok(Message::BatchAck(BatchAck {
                epoch,
                sequence,
                outcome,
            })
            .encode()),
            Reply::Unread(outcome) => Ok(Message::BatchAck(BatchAck {
                epoch: 0,
                sequence: 0,
                outcome,
            })
            .encode()),
        }
    }

    async fn close(&mut self) {}

    fn rtts(&mut self, endpoints: &[CoreEndpoint]) -> Vec<Option<Duration>> {
        let (rtts, down) = (
            self.rtts.lock().expect("lock"),
            self.down.lock().expect("lock"),
        );
        endpoints
            .iter()
            .map(|e| e.to_string())
            .map(|e| {
                (!down.contains(&e))
                    .then(|| rtts.get(&e).copied())
                    .flatten()
            })
            .collect()
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    writer: LogWriter,
    reader: LogReader,
    progress: watch::Sender<Progress>,
    stop: watch::Sender<bool>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LogOptions {
            segment_max_bytes: 1 << 20,
        };
        let (writer, reader, _) = buffer::open(dir.path(), options).expect("open");
        Self {
            _dir: dir,
            writer,
            reader,
            progress: watch::Sender::new(Progress::default()),
            stop: watch::Sender::new(false),
        }
    }

    /// Appends one record with `n` samples of one series and makes it durable. Timestamps
    /// continue across records (a batch keeps one sample per timestamp and series).
    fn append(&mut self, n: usize) -> Offset {
        let labels = Labels::from_metric("temp", [("site", "s1")]).expect("valid");
        let first = self.progress.borrow().samples as i64;
        let samples = (first..first + n as i64)
            .map(|t| Sample::new(t, t as f64))
            .collect();
        let payload = record::encode(&Tenant::default(), &[SeriesSamples { labels, samples }])
            .expect("encodes");
        self.writer.append(&payload).expect("append");
        let end = self.writer.sync().expect("sync");
        self.progress.send_modify(|p| {
            p.durable_end = end;
            p.samples += n as u64;
        });
        end
    }

    fn start(&self, core: ScriptedCore, endpoints: &[&str]) -> tokio::task::JoinHandle<()> {
        self.start_with_hold(core, endpoints, FAILOVER_HOLD)
    }

    fn start_with_hold(
        &self,
        core: ScriptedCore,
        endpoints: &[&str],
        failover_hold: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let settings = UplinkSettings {
            agent_id: AgentId("edge-test".into()),
            endpoints: endpoints
                .iter()
                .map(|e| e.parse().expect("endpoint"))
                .collect(),
            batch_max_samples: 10,
            batch_max_delay: Duration::ZERO,
            backoff: Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            backlog_rate: 0,
            failover_hold,
        };
        let uplink = Uplink::new(
            core,
            self.reader.clone(),
            settings,
            self.progress.subscribe(),
            self.stop.subscribe(),
        );
        tokio::spawn(async move {
            uplink.run().await.expect("uplink runs");
        })
    }

    async fn wait_acked(&self, upto: Offset) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while self.reader.acked() < upto {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "buffer never acknowledged up to {upto}");
    }

    async fn shut_down(&self, task: tokio::task::JoinHandle<()>) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("uplink stops")
            .expect("uplink task");
    }
}

#[tokio::test]
async fn failed_deliveries_are_resent_unchanged_to_the_next_endpoint() {
    let mut h = Harness::new();
    let end = h.append(3);
    let core = ScriptedCore::new([
        Reply::Unreachable,
        Reply::Answer(AckOutcome::Failed {
            code: ErrorCode::Unavailable,
            message: "starting".into(),
        }),
        Reply::Answer(AckOutcome::Stored {
            samples: 3,
            rejected_series: 0,
            rejection: None,
        }),
    ]);
    let task = h.start(core.clone(), &["core-a:4433", "core-b:4433"]);
    h.wait_acked(end).await;
    h.shut_down(task).await;

    let seen = core.seen();
    let endpoints: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(endpoints, ["core-a:4433", "core-b:4433", "core-a:4433"]);
    // Every attempt is the same batch: same epoch, sequence and samples.
    assert!(seen.windows(2).all(|w| w[0].1 == w[1].1));
    assert_eq!(seen[0].1.sequence, end.0);
    assert_eq!(seen[0].1.epoch, h.reader.epoch().0);
    assert_eq!(seen[0].1.sample_count(), 3);
}

#[tokio::test]
async fn a_batch_rejected_for_good_is_dropped_and_does_not_wedge_the_buffer() {
    let mut h = Harness::new();
    let first = h.append(2);
    let core = ScriptedCore::new([Reply::Answer(AckOutcome::Failed {
        code: ErrorCode::BadData,
        message: "no".into(),
    })]);
    let task = h.start(core.clone(), &["core-a:4433"]);
    h.wait_acked(first).await;
    let second = h.append(1);
    h.wait_acked(second).await;
    h.shut_down(task).await;

    let sequences: Vec<u64> = core.seen().iter().map(|(_, b)| b.sequence).collect();
    assert_eq!(
        sequences,
        [first.0, second.0],
        "the rejected batch is not resent"
    );
}

#[tokio::test]
async fn a_core_over_its_memory_budget_gets_the_batch_again_later() {
    // A core whose in-flight budget is exhausted answers `too_many_requests` for epoch 0,
    // sequence 0 (it never read the frame); a non-retryable answer without the batch's
    // sequence is not taken as this batch's verdict.
    let mut h = Harness::new();
    let end = h.append(2);
    let core = ScriptedCore::new([
        Reply::Unread(AckOutcome::Failed {
            code: ErrorCode::TooManyRequests,
            message: "budget".into(),
        }),
        Reply::Unread(AckOutcome::Failed {
            code: ErrorCode::BadData,
            message: "not this batch's".into(),
        }),
        Reply::Answer(AckOutcome::Stored {
            samples: 2,
            rejected_series: 0,
            rejection: None,
        }),
    ]);
    let task = h.start(core.clone(), &["core-a:4433"]);
    h.wait_acked(end).await;
    h.shut_down(task).await;

    let seen = core.seen();
    assert_eq!(seen.len(), 3, "the batch is sent until it is stored");
    assert!(seen.windows(2).all(|w| w[0].1 == w[1].1));
}

#[tokio::test]
async fn a_refused_agent_keeps_its_batch_and_retries_it() {
    // The core refuses the agent itself (e.g. its certificate names another tenant): the
    // operator fixes that, and the data must still be there when they have.
    let mut h = Harness::new();
    let end = h.append(2);
    let core = ScriptedCore::new([
        Reply::Answer(AckOutcome::Failed {
            code: ErrorCode::Unauthorized,
            message: "batch for tenant a from an agent of tenant b".into(),
        }),
        Reply::Answer(AckOutcome::Stored {
            samples: 2,
            rejected_series: 0,
            rejection: None,
        }),
    ]);
    let task = h.start(core.clone(), &["core-a:4433"]);
    h.wait_acked(end).await;
    h.shut_down(task).await;

    let seen = core.seen();
    assert_eq!(seen.len(), 2, "the refused batch is sent again");
    assert_eq!(seen[0].1, seen[1].1);
}

#[tokio::test]
async fn batches_respect_the_sample_limit_and_keep_record_boundaries() {
    let mut h = Harness::new();
    let ends: Vec<Offset> = (0..4).map(|_| h.append(4)).collect();
    let core = ScriptedCore::new([]);
    let task = h.start(core.clone(), &["core-a:4433"]);
    h.wait_acked(ends[3]).await;
    h.shut_down(task).await;

    // Limit 10 with records of 4 samples: two records per batch.
    let batches: Vec<(u64, usize)> = core
        .seen()
        .iter()
        .map(|(_, b)| (b.sequence, b.sample_count()))
        .collect();
    assert_eq!(batches, [(ends[1].0, 8), (ends[3].0, 8)]);
}

#[tokio::test]
async fn stop_during_endless_failures_returns_promptly_without_acknowledging() {
    let mut h = Harness::new();
    h.append(1);
    let core = ScriptedCore::new(std::iter::repeat_n(Reply::Unreachable, 100_000));
    let task = h.start(core.clone(), &["core-a:4433"]);
    tokio::time::timeout(Duration::from_secs(10), async {
        while core.seen().len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("retries happen");
    h.shut_down(task).await;
    assert_eq!(
        h.reader.acked(),
        Offset(0),
        "undelivered data stays in the buffer"
    );
}

#[tokio::test]
async fn resumes_after_what_the_core_already_applied() {
    let mut h = Harness::new();
    let ends: Vec<Offset> = (0..4).map(|_| h.append(4)).collect();
    let core = ScriptedCore::new([]);
    // The core applied the first two records' batch before we could move our cursor.
    *core.applied.lock().expect("lock") = Some((h.reader.epoch().0, ends[1].0));
    let task = h.start(core.clone(), &["core-a:4433"]);
    h.wait_acked(ends[3]).await;
    h.shut_down(task).await;
    let sent: Vec<u64> = core.seen().iter().map(|(_, b)| b.sequence).collect();
    assert_eq!(
        sent,
        [ends[3].0],
        "only the records after the resume point are sent"
    );
}

#[tokio::test]
async fn a_resume_point_from_another_epoch_is_ignored() {
    let mut h = Harness::new();
    let ends: Vec<Offset> = (0..2).map(|_| h.append(4)).collect();
    let core = ScriptedCore::new([]);
    *core.applied.lock().expect("lock") = Some((h.reader.epoch().0 ^ 1, ends[1].0));
    let task = h.start(core.clone(), &["core-a:4433"]);
    h.wait_acked(ends[1]).await;
    h.shut_down(task).await;
    assert_eq!(core.seen().len(), 1, "everything is sent");
}

#[tokio::test]
async fn batches_go_to_the_core_with_the_lowest_round_trip_time() {
    let mut h = Harness::new();
    let core = ScriptedCore::new([]);
    core.set_rtt("core-a:4433", 80);
    core.set_rtt("core-b:4433", 3);
    core.set_rtt("core-c:4433", 20);
    let task = h.start(core.clone(), &["core-a:4433", "core-b:4433", "core-c:4433"]);
    let first = h.append(3);
    h.wait_acked(first).await;
    // The fast core slows down: the next batch goes to the one now fastest.
    core.set_rtt("core-b:4433", 200);
    let second = h.append(3);
    h.wait_acked(second).await;
    h.shut_down(task).await;
    assert_eq!(core.endpoints_seen(), ["core-b:4433", "core-c:4433"]);
}

#[tokio::test]
async fn a_dead_fastest_core_is_left_for_the_next_fastest_then_used_again_once_back() {
    let mut h = Harness::new();
    let core = ScriptedCore::new([]);
    let (a, b, c) = ("core-a:4433", "core-b:4433", "core-c:4433");
    core.set_rtt(a, 40);
    core.set_rtt(b, 2);
    core.set_rtt(c, 15);
    let hold = Duration::from_millis(300);
    let task = h.start_with_hold(core.clone(), &[a, b, c], hold);
    let first = h.append(2);
    h.wait_acked(first).await;

    // b stops answering while it still looks alive (its connection has not timed out yet):
    // one failed attempt, then the batch goes to c, the next fastest, not to a, the next in
    // the list.
    core.script
        .lock()
        .expect("lock")
        .push_back(Reply::Unreachable);
    let second = h.append(2);
    h.wait_acked(second).await;
    // Its connection is gone now: it is passed over even after the hold.
    core.set_down(b, true);
    tokio::time::sleep(hold * 2).await;
    let third = h.append(2);
    h.wait_acked(third).await;
    // Back, and fastest again.
    core.set_down(b, false);
    let fourth = h.append(2);
    h.wait_acked(fourth).await;
    h.shut_down(task).await;

    assert_eq!(core.endpoints_seen(), [b, b, c, c, b]);
    let sequences: Vec<u64> = core.seen().iter().map(|(_, x)| x.sequence).collect();
    assert_eq!(
        sequences,
        [first.0, second.0, second.0, third.0, fourth.0],
        "the failed batch is resent unchanged"
    );
}

//! Storage tests, each run in clear and encrypted at rest where it applies (see
//! [`in_clear_and_encrypted`]): one file per concern, shared helpers here.

use super::*;
use protocols::wire::{AgentId, SeriesChunk};
use protocols::{Labels, Sample, SeriesId, Tenant};
use query::{DataSource, Matcher};
use std::time::Duration;

fn batch(seq: u64, series: Vec<(Labels, Vec<Sample>)>) -> WriteBatch {
    WriteBatch {
        agent_id: AgentId("a1".into()),
        epoch: 9,
        sequence: seq,
        tenant: Tenant::default(),
        series: series
            .into_iter()
            .map(|(labels, samples)| SeriesChunk::encode(labels, samples).expect("encodes"))
            .collect(),
    }
}

thread_local! {
    /// The keys of the running test's storage when it runs encrypted (each test has its own
    /// thread): the same keys on every open, as a node's keyring gives them.
    static ENCRYPTION: std::cell::RefCell<Option<Encryption>> = const { std::cell::RefCell::new(None) };
}

/// Runs `test` with encryption at rest on: every storage it opens through [`quiet`] seals.
fn encrypted(test: fn()) {
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let e = Encryption::from_keyring(&ring).expect("keys");
    ENCRYPTION.with(|cell| *cell.borrow_mut() = Some(e));
    test();
}

/// Options whose background compactor never runs during a test (encrypted in the
/// `encrypted` copy of each test).
fn quiet() -> StorageOptions {
    StorageOptions {
        compaction: CompactionOptions {
            interval: Duration::from_secs(3600),
            ..CompactionOptions::default()
        },
        encryption: ENCRYPTION.with(|cell| cell.borrow().clone()),
        ..StorageOptions::default()
    }
}

fn labels(metric: &str, pairs: &[(&str, &str)]) -> Labels {
    Labels::from_metric(metric, pairs.iter().copied()).expect("valid labels")
}

fn write(s: &Storage, b: WriteBatch) -> AckOutcome {
    s.submit(b)
        .expect("queued")
        .blocking_recv()
        .expect("answered")
        .expect("stored")
}

/// Writes `b` and flushes the head, so that its samples are chunks in fjall.
fn write_flushed(s: &Storage, b: WriteBatch) -> AckOutcome {
    let out = write(s, b);
    s.checkpoint().expect("head flushed");
    out
}

/// Runs each named test twice: in clear and with encryption at rest.
macro_rules! in_clear_and_encrypted {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn in_clear() {
                super::$name();
            }

            #[test]
            fn encrypted() {
                super::encrypted(super::$name);
            }
        }
    )*};
}

mod admission;
mod encryption;
mod flushes;
mod reads;

//! Recovery from a damaged write-ahead log, on committed fixtures.
//!
//! Each fixture under `tests/fixtures/<name>/wal` is a WAL whose records are `WriteBatch`
//! frames of series `m{case="<name>"}` with samples `(i * 1000, i)` (one record per sample,
//! record `i` carrying sequence `i + 1`), damaged as its name says. Storage is opened on a copy
//! of it with an empty fjall, so everything a query returns came from replaying the WAL. The
//! node must start, keep every record before the damage (and after it, where the framing can
//! still be trusted), and count what it cut.
//!
//! Regenerate the fixtures with
//! `cargo test -p core-node --test wal_recovery -- --ignored regenerate_fixtures`.

use core_node::storage::{CompactionOptions, Storage, StorageOptions};
use protocols::wire::{AgentId, SeriesChunk, WriteBatch};
use protocols::{Labels, Sample, SeriesId, Tenant};
use query::DataSource;
use std::path::{Path, PathBuf};
use std::time::Duration;

const RECORDS: i64 = 8;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn labels(case: &str) -> Labels {
    Labels::from_metric("m", [("case", case)]).expect("valid")
}

fn frame(case: &str, i: i64) -> Vec<u8> {
    WriteBatch {
        agent_id: AgentId("fixture".into()),
        epoch: 1,
        sequence: i as u64 + 1,
        tenant: Tenant::default(),
        series: vec![
            SeriesChunk::encode(labels(case), vec![Sample::new(i * 1000, i as f64)])
                .expect("encodes"),
        ],
    }
    .encode_frame()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// Opens storage on a copy of the fixture and returns the values it holds.
fn recovered(case: &str) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture(case).join("wal"), &dir.path().join("wal"));
    let options = StorageOptions {
        compaction: CompactionOptions {
            interval: Duration::from_secs(3600),
            ..CompactionOptions::default()
        },
        ..StorageOptions::default()
    };
    let storage = Storage::open(dir.path(), options).expect("the node starts");
    let id = SeriesId::of(&Tenant::default(), &labels(case));
    let values: Vec<f64> = storage
        .samples(id, i64::MIN, i64::MAX)
        .expect("reads")
        .iter()
        .map(|s| s.value)
        .collect();
    drop(storage);
    // A second open finds a clean, checkpointed log and the same data.
    let again = Storage::open(dir.path(), StorageOptions::default()).expect("reopens");
    let values_again: Vec<f64> = again
        .samples(id, i64::MIN, i64::MAX)
        .expect("reads")
        .iter()
        .map(|s| s.value)
        .collect();
    assert_eq!(values, values_again, "recovery is stable");
    values
}

fn all_but(skip: &[i64]) -> Vec<f64> {
    (0..RECORDS)
        .filter(|i| !skip.contains(i))
        .map(|i| i as f64)
        .collect()
}

#[test]
fn intact_wal_is_replayed_completely() {
    assert_eq!(recovered("wal-intact"), all_but(&[]));
}

#[test]
fn torn_tail_is_cut_at_the_last_good_record() {
    // The last record was half written when the process died.
    assert_eq!(recovered("wal-torn-tail"), all_but(&[RECORDS - 1]));
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    assert_eq!(recovered("wal-garbage-tail"), all_but(&[]));
}

#[test]
fn a_corrupt_record_in_the_middle_costs_only_that_record() {
    assert_eq!(recovered("wal-corrupt-middle"), all_but(&[3]));
}

#[test]
fn a_corrupt_last_record_is_cut_and_everything_before_kept() {
    assert_eq!(recovered("wal-corrupt-last"), all_but(&[RECORDS - 1]));
}

/// Writes the fixtures (run by hand; see the module docs).
#[test]
#[ignore = "regenerates committed fixtures"]
fn regenerate_fixtures() {
    for case in [
        "wal-intact",
        "wal-torn-tail",
        "wal-garbage-tail",
        "wal-corrupt-middle",
        "wal-corrupt-last",
    ] {
        let wal = fixture(case).join("wal");
        let _ = std::fs::remove_dir_all(fixture(case));
        let (mut writer, _reader, _) = seglog::open(
            &wal,
            seglog::LogOptions {
                segment_max_bytes: 1 << 20,
            },
        )
        .expect("open");
        let mut ends = vec![0u64];
        for i in 0..RECORDS {
            ends.push(writer.append(&frame(case, i)).expect("append").0);
        }
        writer.sync().expect("sync");
        drop(writer);
        drop(_reader);
        let _ = std::fs::remove_file(wal.join("LOCK"));
        let segment = wal.join(format!("{:020}.seg", 0));
        let mut bytes = std::fs::read(&segment).expect("segment");
        // Offsets count record bytes only; the segment starts with an 8-byte header.
        let at = |offset: u64| 8 + offset as usize;
        match case {
            "wal-torn-tail" => {
                let last = at(ends[RECORDS as usize - 1]);
                bytes.truncate(last + (bytes.len() - last) / 2);
            }
            "wal-garbage-tail" => bytes.extend_from_slice(&[0xA5; 37]),
            "wal-corrupt-middle" => {
                let start = at(ends[3]);
                bytes[start + 12] ^= 0xFF; // inside the payload: the CRC fails
            }
            "wal-corrupt-last" => {
                let n = bytes.len();
                bytes[n - 3] ^= 0xFF;
            }
            _ => {}
        }
        std::fs::write(&segment, bytes).expect("write");
    }
}

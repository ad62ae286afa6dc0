//! Behaviour tests for the buffer: each one writes, "crashes" (drops every handle, optionally
//! damages files), reopens and checks what a user would notice: which records come back.

use crate::reader::ReadChunk;
use crate::*;
use std::fs;
use std::io::{Seek, SeekFrom, Write};

/// Small segments so that a handful of records spans several files.
const SMALL: LogOptions = LogOptions {
    segment_max_bytes: 64,
};

fn open_at(dir: &Path) -> (LogWriter, LogReader, Recovery) {
    open(dir, SMALL).expect("buffer opens")
}

fn payload(i: usize) -> Vec<u8> {
    format!("record-{i:03}").into_bytes()
}

/// Appends `n` records (numbered from `first`) and fsyncs once; returns their end offsets.
fn append_n(w: &mut LogWriter, first: usize, n: usize) -> Vec<Offset> {
    let ends = (first..first + n)
        .map(|i| w.append(&payload(i)).expect("append"))
        .collect();
    w.sync().expect("sync");
    ends
}

fn read_all(r: &LogReader, from: Offset) -> ReadChunk {
    r.read(from, usize::MAX).expect("read")
}

fn payloads(chunk: &ReadChunk) -> Vec<Vec<u8>> {
    chunk.records.iter().map(|r| r.payload.clone()).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn round_trip_with_offsets_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, r, rec) = open_at(dir.path());
    assert!(rec.fresh);
    assert_eq!((rec.acked, rec.end), (Offset(0), Offset(0)));

    let ends = append_n(&mut w, 0, 5);
    let chunk = read_all(&r, Offset(0));
    assert_eq!(payloads(&chunk), (0..5).map(payload).collect::<Vec<_>>());
    let got_ends: Vec<Offset> = chunk.records.iter().map(|r| r.end).collect();
    assert_eq!(got_ends, ends);
    assert_eq!(chunk.next, ends[4]);
    // Offsets are contiguous even though the records live in several segment files.
    for pair in chunk.records.windows(2) {
        assert_eq!(pair[0].end, pair[1].start);
    }
    assert!(segment_files(dir.path()).len() > 1);
    assert_eq!(r.unacked_bytes(), ends[4].0);

    // Reading from the middle returns the rest; a byte budget stops early at a record boundary.
    assert_eq!(
        payloads(&read_all(&r, ends[1])),
        (2..5).map(payload).collect::<Vec<_>>()
    );
    let first = r.read(Offset(0), 1).expect("read");
    assert_eq!(first.records.len(), 1);
    assert_eq!(first.next, ends[0]);
}

#[test]
fn unsynced_records_are_invisible_to_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, r, _) = open_at(dir.path());
    w.append(b"not yet").expect("append");
    assert!(read_all(&r, Offset(0)).records.is_empty());
    w.sync().expect("sync");
    assert_eq!(read_all(&r, Offset(0)).records.len(), 1);
}

#[test]
fn restart_resumes_from_the_acknowledged_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (epoch, ends) = {
        let (mut w, r, rec) = open_at(dir.path());
        let ends = append_n(&mut w, 0, 6);
        r.ack(ends[3]).expect("ack");
        (rec.epoch, ends)
    };
    let (mut w, r, rec) = open_at(dir.path());
    assert!(!rec.fresh && !rec.cursor_lost);
    assert_eq!(rec.epoch, epoch, "the epoch survives restarts");
    assert_eq!((rec.acked, rec.end), (ends[3], ends[5]));
    assert_eq!(rec.corrupt_bytes, 0);
    assert_eq!(
        payloads(&read_all(&r, rec.acked)),
        vec![payload(4), payload(5)]
    );

    // New records continue the offsets after the recovered end.
    let more = append_n(&mut w, 6, 1);
    assert!(more[0] > ends[5]);
    assert_eq!(read_all(&r, ends[5]).records[0].payload, payload(6));
}

#[test]
fn acknowledging_deletes_only_segments_wholly_below_the_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut w, r, _) = open_at(dir.path());
    let ends = append_n(&mut w, 0, 8);
    let before = segment_files(dir.path()).len();
    r.ack(ends[5]).expect("ack");
    let after = segment_files(dir.path()).len();
    assert!(after < before, "acknowledged segments are deleted");
    assert_eq!(
        payloads(&read_all(&r, ends[5])),
        vec![payload(6), payload(7)]
    );
    r.ack(ends[7]).expect("ack");
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the active segment is never deleted"
    );
    assert_eq!(r.unacked_bytes(), 0);
    assert!(matches!(
        r.ack(Offset(ends[7].0 + 1)),
        Err(LogError::AckBeyondEnd { .. })
    ));
}

#[test]
fn a_rolled_segment_goes_with_the_acknowledgement_of_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = LogOptions {
        segment_max_bytes: 1 << 20,
    };
    let (mut w, r, _) = open(dir.path(), big).expect("opens");
    let ends = append_n(&mut w, 0, 3);
    let end = *ends.last().expect("three records");
    assert!(!w.roll_at(1 << 20).expect("roll"), "below the size: stays");
    r.ack(end).expect("ack");
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "the current segment stays"
    );

    let ends = append_n(&mut w, 3, 3);
    let end = *ends.last().expect("three records");
    assert!(w.roll_at(1).expect("roll"));
    assert_eq!(segment_files(dir.path()).len(), 2);
    r.ack(end).expect("ack");
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the new, empty segment"
    );
    assert!(!w.roll_at(1).expect("roll"), "an empty segment never rolls");
    drop((w, r));

    // After a restart the log goes on from the same offsets, and nothing comes back.
    let (mut w, r, rec) = open(dir.path(), big).expect("reopens");
    assert_eq!((rec.acked, rec.end), (end, end));
    assert!(read_all(&r, rec.acked).records.is_empty());
    append_n(&mut w, 6, 1);
    assert_eq!(payloads(&read_all(&r, rec.acked)), vec![payload(6)]);
}

#[test]
fn torn_tail_is_truncated_at_the_last_good_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = {
        let (mut w, _, _) = open_at(dir.path());
        append_n(&mut w, 0, 3)
    };
    // A crash mid-append: a frame header announcing 100 bytes, then only some of them.
    let last = segment_files(dir.path()).pop().expect("a segment");
    let mut f = OpenOptions::new().append(true).open(&last).expect("open");
    f.write_all(&100u32.to_le_bytes()).expect("write");
    f.write_all(&[0xAB; 4 + 30]).expect("write");
    drop(f);

    let (mut w, r, rec) = open_at(dir.path());
    assert_eq!(rec.end, ends[2]);
    assert_eq!(rec.corrupt_bytes, 38);
    assert_eq!(
        payloads(&read_all(&r, Offset(0))),
        (0..3).map(payload).collect::<Vec<_>>()
    );
    // Appending after the repair works and reads back cleanly.
    append_n(&mut w, 3, 1);
    assert_eq!(read_all(&r, Offset(0)).records.len(), 4);
}

#[test]
fn garbage_tail_and_bad_last_checksum_are_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = {
        let (mut w, _, _) = open_at(dir.path());
        append_n(&mut w, 0, 2)
    };
    let last = segment_files(dir.path()).pop().expect("a segment");
    // Flip a payload byte of the last record and add a few garbage bytes.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last)
        .expect("open");
    let len = f.metadata().expect("meta").len();
    f.seek(SeekFrom::Start(len - 1)).expect("seek");
    f.write_all(&[b'X', 1, 2, 3]).expect("write");
    drop(f);

    let (_, r, rec) = open_at(dir.path());
    assert!(rec.end < ends[1]);
    assert_eq!(payloads(&read_all(&r, Offset(0))), vec![payload(0)]);
}

#[test]
fn corrupt_checksum_in_the_middle_skips_only_that_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = LogOptions {
        segment_max_bytes: 1 << 20,
    };
    let ends = {
        let (mut w, _, _) = open(dir.path(), big).expect("open");
        append_n(&mut w, 0, 3)
    };
    let seg = segment_files(dir.path()).pop().expect("a segment");
    let mut bytes = fs::read(&seg).expect("read");
    // Last payload byte of the middle record.
    let at = (segment::HEADER_LEN + ends[1].0 - 1) as usize;
    bytes[at] ^= 0xFF;
    fs::write(&seg, &bytes).expect("write");

    let (_, r, rec) = open(dir.path(), big).expect("open");
    assert_eq!(
        rec.corrupt_bytes, 0,
        "damage in the middle is not a torn tail"
    );
    assert_eq!(rec.end, ends[2]);
    let chunk = read_all(&r, Offset(0));
    assert_eq!(payloads(&chunk), vec![payload(0), payload(2)]);
    assert_eq!(chunk.corrupt_bytes, ends[1].0 - ends[0].0);
    assert_eq!(chunk.next, ends[2]);
}

#[test]
fn unreadable_length_in_an_older_segment_costs_only_that_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = {
        let (mut w, _, _) = open_at(dir.path());
        append_n(&mut w, 0, 8)
    };
    let first = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&first).expect("read");
    bytes[segment::HEADER_LEN as usize + 3] = 0xFF; // length of the first record: huge
    fs::write(&first, &bytes).expect("write");

    let (_, r, _) = open_at(dir.path());
    let chunk = read_all(&r, Offset(0));
    let got = payloads(&chunk);
    assert!(!got.contains(&payload(0)));
    assert_eq!(
        got.last(),
        Some(&payload(7)),
        "later segments are still read"
    );
    assert!(chunk.corrupt_bytes > 0);
    assert_eq!(chunk.next, ends[7]);
}

#[test]
fn offsets_never_restart_below_the_acknowledged_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acked = {
        let (mut w, r, _) = open_at(dir.path());
        let ends = append_n(&mut w, 0, 2);
        r.ack(ends[1]).expect("ack");
        ends[1]
    };
    // The data under the cursor is lost (e.g. the segment was truncated by disk damage).
    for f in segment_files(dir.path()) {
        let file = OpenOptions::new().write(true).open(&f).expect("open");
        file.set_len(segment::HEADER_LEN).expect("truncate");
    }
    let (mut w, r, rec) = open_at(dir.path());
    assert!(rec.end >= acked);
    let end = append_n(&mut w, 9, 1)[0];
    assert!(
        end > acked,
        "a new batch must never reuse an acknowledged sequence"
    );
    assert_eq!(payloads(&read_all(&r, rec.acked)), vec![payload(9)]);
}

#[test]
fn lost_cursor_starts_a_new_epoch_and_resends_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let epoch = {
        let (mut w, r, rec) = open_at(dir.path());
        let ends = append_n(&mut w, 0, 3);
        r.ack(ends[0]).expect("ack");
        rec.epoch
    };
    fs::remove_file(dir.path().join(cursor::FILE)).expect("remove ack");
    let (_, r, rec) = open_at(dir.path());
    assert!(rec.cursor_lost);
    assert_ne!(rec.epoch, epoch);
    let chunk = read_all(&r, rec.acked);
    assert_eq!(payloads(&chunk), (0..3).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = open_at(dir.path());
    assert!(matches!(open(dir.path(), SMALL), Err(LogError::Locked(_))));
}

#[test]
fn unknown_segment_version_is_refused_not_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open_at(dir.path()));
    let seg = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&seg).expect("read");
    bytes[4] = 42;
    fs::write(&seg, &bytes).expect("write");
    assert!(matches!(
        open(dir.path(), SMALL),
        Err(LogError::UnsupportedVersion { found: 42, .. })
    ));
}

#[test]
fn torn_segment_header_after_a_roll_is_rewritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ends = {
        let (mut w, _, _) = open_at(dir.path());
        append_n(&mut w, 0, 2)
    };
    // A crash right after creating the next segment, before its header reached the disk.
    let next = segment::path(dir.path(), ends[1]);
    fs::write(&next, [0u8; 3]).expect("write");
    let (mut w, r, rec) = open_at(dir.path());
    assert_eq!(rec.end, ends[1]);
    append_n(&mut w, 2, 1);
    assert_eq!(read_all(&r, Offset(0)).records.len(), 3);
}

fn sealer(key: u8) -> crypt::Sealer {
    crypt::Sealer::from_keys(1, &[(1, [key; 32])]).expect("sealer")
}

#[test]
fn encrypted_log_round_trips_and_holds_no_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut w, r, _) = open_encrypted(dir.path(), SMALL, Some(sealer(1))).expect("open");
        append_n(&mut w, 0, 6);
        assert_eq!(
            payloads(&read_all(&r, Offset(0))),
            (0..6).map(payload).collect::<Vec<_>>()
        );
    }
    for file in segment_files(dir.path()) {
        let bytes = fs::read(&file).expect("read");
        assert!(
            !bytes.windows(7).any(|w| w == b"record-"),
            "{} holds plaintext",
            file.display()
        );
    }
    let (_, r, _) = open_encrypted(dir.path(), SMALL, Some(sealer(1))).expect("reopen");
    assert_eq!(read_all(&r, Offset(0)).records.len(), 6);
    drop(r);
    // The wrong key: every record is skipped and counted, never handed out as garbage.
    let (_, r, _) = open_encrypted(dir.path(), SMALL, Some(sealer(2))).expect("reopen");
    let chunk = read_all(&r, Offset(0));
    assert!(chunk.records.is_empty());
    assert!(chunk.corrupt_bytes > 0);
}

#[test]
fn encrypted_and_plain_segments_never_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut w, _, _) = open_encrypted(dir.path(), SMALL, Some(sealer(1))).expect("open");
        append_n(&mut w, 0, 2);
    }
    let err = open(dir.path(), SMALL).expect_err("plain open of an encrypted log");
    assert!(
        matches!(
            err,
            LogError::EncryptionMismatch {
                encrypted: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("without a master key"), "{err}");

    let plain = tempfile::tempdir().expect("tempdir");
    {
        let (mut w, _, _) = open(plain.path(), SMALL).expect("open");
        append_n(&mut w, 0, 2);
    }
    let err = open_encrypted(plain.path(), SMALL, Some(sealer(1))).expect_err("mixing");
    assert!(
        matches!(
            err,
            LogError::EncryptionMismatch {
                encrypted: false,
                ..
            }
        ),
        "{err}"
    );

    // A fresh plain log with no records may become encrypted.
    let empty = tempfile::tempdir().expect("tempdir");
    drop(open(empty.path(), SMALL).expect("open"));
    let (mut w, r, _) = open_encrypted(empty.path(), SMALL, Some(sealer(1))).expect("open");
    append_n(&mut w, 0, 1);
    assert_eq!(read_all(&r, Offset(0)).records.len(), 1);
}

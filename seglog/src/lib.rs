//! A segmented, append-only durable log: the edge agent's buffer and the core node's
//! write-ahead log.
//!
//! One writer appends opaque records and fsyncs once per burst (group commit); one or more
//! reader handles read records from any offset up to the durable end and acknowledge offsets,
//! which persists the cursor and deletes segments nobody needs any more. What a record holds
//! is the user's business (the edge stores sample records, the core whole write batches). All
//! calls do blocking file I/O: call them from a dedicated thread or `spawn_blocking`.
//!
//! It is not a queue with several consumers, nor an index: reads are sequential from an
//! offset, and the only deletion is "everything before the acknowledged offset".
//!
//! # On-disk layout
//!
//! ```text
//! <log-dir>/                    (the edge: <data-dir>/buffer, the core: <data-dir>/wal)
//!   LOCK                        advisory lock held while a process has the log open
//!   ack                         epoch + acknowledged offset (replaced atomically)
//!   ack.tmp                     transient, removed on open
//!   00000000000000000000.seg    segment whose first record starts at logical offset 0
//!   00000000000016777240.seg    next segment, first record at offset 16777240
//!   *.corrupt                   segments set aside by recovery, kept for inspection
//! ```
//!
//! A segment is an 8-byte header `["UPDS"][version u8 = 1][3 zero bytes]` followed by records:
//!
//! ```text
//! +--------------+----------------+------------------------+
//! | len (u32 LE) | crc32 (u32 LE) | payload (len bytes)    |
//! +--------------+----------------+------------------------+
//! ```
//!
//! `crc32` is CRC-32/IEEE of the payload. The payload format belongs to the user of the log.
//!
//! **Encrypted logs** ([`open_encrypted`]): segments carry version 2 instead of 1, and every
//! payload on disk is a `crypt` sealed record (AES-256-GCM, the key id in its header, see the
//! `crypt` crate docs) of the user's payload; `crc32` covers the sealed bytes. Readers hand
//! out the opened payload, so users of the log do not change. A log opened without a sealer
//! refuses encrypted segments, and one opened with a sealer refuses plain segments that hold
//! records ([`LogError::EncryptionMismatch`]): the two never mix. A sealed record that does
//! not open (changed bytes behind a recomputed CRC) is skipped and counted like a record with
//! a bad checksum.
//!
//! The `ack` file is 28 bytes: `["UPDA"][version u8 = 1][3 zero bytes][epoch u64 LE]`
//! `[acked offset u64 LE][crc32 u32 LE of the first 24 bytes]`.
//!
//! # Offsets, epoch and sequence
//!
//! A record's logical [`Offset`] is the number of record bytes (frame headers included, segment
//! headers excluded) written before it in this epoch; a segment's file name is the offset of its
//! first record. The [`Epoch`] is a random `u64` chosen when the buffer is created (or its
//! cursor is lost) and stored in `ack`. Batches sent to a core carry `(epoch, end offset of the
//! batch's last record)` as `(epoch, sequence)`: a resend after a crash covers the same records
//! and so carries the same or a higher sequence, which lets the core deduplicate.
//!
//! # Invariants
//!
//! - Offsets only grow; a record never spans two segments; only the last segment is written.
//! - Every byte below the durable end has been fsynced; readers never read past it.
//! - `acked <= durable end`, and a restart never hands out an offset below `acked` (if recovery
//!   ends below it, the next segment starts at `acked`), so sequences never go backwards.
//! - A segment is deleted only once the next segment starts at or below `acked`.
//!
//! # Recovery (on open)
//!
//! - The tail of the last segment is scanned: a torn or corrupt tail is truncated at the last
//!   good record and reported in [`Recovery::corrupt_bytes`]; nothing before it is lost.
//! - A record whose checksum fails but whose length is plausible and which is followed by a
//!   good record is damage in the middle, not a torn tail: it is left in place and skipped (and
//!   reported) by the reader, so one bad record never costs its neighbours. A length field that
//!   cannot be trusted in an older segment costs the rest of that segment only.
//! - A segment header that is torn (crash right after a roll) is rewritten; one that is not a
//!   segment header is renamed to `*.corrupt` and skipped.
//! - A missing or damaged `ack` file with segments present starts a new epoch and re-sends
//!   everything still on disk: duplicates are harmless (same series, timestamp and value),
//!   losing data is not.
//!
//! # Compatibility rule
//!
//! Segment headers, the `ack` file and record payloads each carry a version byte. A build
//! refuses to open a buffer containing a version it does not know (no silent data loss on a
//! downgrade); a newer build keeps reading every older version.

mod cursor;
mod reader;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

pub use crypt;
pub use reader::LogReader;
pub use writer::LogWriter;

use segment::HeaderState;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tracing::{error, warn};

/// A position in the buffer's log, in bytes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies one lifetime of the buffer's offsets; sent to the core with every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("log directory {0} is in use by another process")]
    Locked(PathBuf),
    #[error("{path} has format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        found: u8,
        supported: u8,
    },
    #[error("log writer is poisoned by an earlier write or fsync failure; restart to recover")]
    Poisoned,
    #[error("record of {len} bytes exceeds the {max} byte limit")]
    RecordTooLarge { len: usize, max: u32 },
    #[error(
        "{path} holds {} records, but the log was opened {}; refusing to mix them",
        if *encrypted { "encrypted" } else { "unencrypted" },
        if *encrypted { "without a master key" } else { "with encryption" }
    )]
    EncryptionMismatch { path: PathBuf, encrypted: bool },
    #[error("encryption at rest: {0}")]
    Seal(#[from] crypt::CryptError),
    #[error("cannot acknowledge offset {requested}: only {durable} is durable")]
    AckBeyondEnd { requested: Offset, durable: Offset },
}

fn io_err(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes renames, creations and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// A new segment is started before a record would take the current one past this size.
    pub segment_max_bytes: u64,
}

/// What [`open`] found and repaired.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub epoch: Epoch,
    /// No buffer existed: a new epoch was chosen.
    pub fresh: bool,
    /// Segments existed without a readable `ack` file: a new epoch was chosen and everything
    /// on disk will be re-sent.
    pub cursor_lost: bool,
    pub acked: Offset,
    pub end: Offset,
    /// Bytes truncated from a torn tail or set aside in `*.corrupt` files.
    pub corrupt_bytes: u64,
    pub segments: usize,
}

/// State shared by the writer and the readers.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    epoch: Epoch,
    /// Start offsets of the live segments, ascending; the last one is being written.
    segments: Mutex<Vec<Offset>>,
    durable_end: AtomicU64,
    acked: AtomicU64,
    /// Seals appended records and opens read ones (an encrypted log).
    cipher: Option<crypt::Sealer>,
    /// Serialises acknowledgements (readers are `Clone`).
    ack_lock: Mutex<()>,
    /// Holds the advisory lock for as long as any handle lives.
    _lock: File,
}

impl Shared {
    fn segments(&self) -> MutexGuard<'_, Vec<Offset>> {
        // The list is valid after any panic (every update is a single push or drain).
        self.segments.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn durable_end(&self) -> Offset {
        Offset(self.durable_end.load(Ordering::Acquire))
    }

    fn acked(&self) -> Offset {
        Offset(self.acked.load(Ordering::Acquire))
    }
}

/// Opens (creating if needed) the buffer in `dir`, repairing what a crash left behind.
pub fn open(dir: &Path, options: LogOptions) -> Result<(LogWriter, LogReader, Recovery), LogError> {
    open_encrypted(dir, options, None)
}

/// As [`open`]; with a sealer, every record is encrypted on disk (see the module docs).
pub fn open_encrypted(
    dir: &Path,
    options: LogOptions,
    cipher: Option<crypt::Sealer>,
) -> Result<(LogWriter, LogReader, Recovery), LogError> {
    let sealed = cipher.is_some();
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let lock = lock_dir(dir)?;
    match fs::remove_file(dir.join(cursor::TMP)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(dir, e)),
        _ => {}
    }
    let mut segments = list_segments(dir)?;

    let (epoch, acked, fresh, cursor_lost) = match cursor::load(dir)? {
        cursor::Loaded::Found(c) => (c.epoch, c.acked, false, false),
        loaded => {
            let lost = !segments.is_empty();
            if lost {
                error!(
                    dir = %dir.display(),
                    damaged = matches!(loaded, cursor::Loaded::Damaged),
                    "buffer ack file missing or damaged; starting a new epoch and re-sending \
                     everything on disk"
                );
            }
            let acked = segments.first().copied().unwrap_or_default();
            let epoch = Epoch(rand::random());
            cursor::store(dir, &cursor::Cursor { epoch, acked })?;
            (epoch, acked, !lost, lost)
        }
    };

    // Segments wholly below the cursor: acknowledged before a crash that beat their deletion.
    while segments.len() > 1 && segments[1] <= acked {
        let start = segments.remove(0);
        remove_segment(dir, start);
    }

    let mut corrupt_bytes = 0;
    let mut kept = Vec::with_capacity(segments.len());
    for (i, start) in segments.iter().copied().enumerate() {
        let last = i + 1 == segments.len();
        match check_segment_header(dir, start, last, sealed)? {
            (true, bytes) => {
                corrupt_bytes += bytes;
                kept.push(start);
            }
            (false, bytes) => corrupt_bytes += bytes,
        }
    }
    let mut segments = kept;

    let mut end = Offset(0);
    if let Some(&last) = segments.last() {
        let (data_len, truncated) = recover_tail(dir, last)?;
        corrupt_bytes += truncated;
        end = Offset(last.0 + data_len);
    }
    if segments.is_empty() || end < acked {
        // Never hand out an offset below `acked` (see the invariants).
        end = end.max(acked);
        create_segment(dir, end, sealed)?;
        segments.push(end);
    }
    sync_dir(dir)?;

    let active = *segments.last().unwrap_or(&end);
    let shared = Arc::new(Shared {
        dir: dir.to_owned(),
        epoch,
        segments: Mutex::new(segments.clone()),
        durable_end: AtomicU64::new(end.0),
        acked: AtomicU64::new(acked.0),
        cipher,
        ack_lock: Mutex::new(()),
        _lock: lock,
    });
    let writer = LogWriter::resume(Arc::clone(&shared), active, end, options)?;
    let reader = LogReader::new(shared);
    let recovery = Recovery {
        epoch,
        fresh,
        cursor_lost,
        acked,
        end,
        corrupt_bytes,
        segments: segments.len(),
    };
    Ok((writer, reader, recovery))
}

fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(LogError::Locked(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&path, e)),
    }
}

fn list_segments(dir: &Path) -> Result<Vec<Offset>, LogError> {
    let mut starts = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if let Some(start) = entry.file_name().to_str().and_then(segment::parse_name) {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

/// Deletion failures are logged, not fatal: a leftover segment below the cursor is deleted on
/// the next open.
fn remove_segment(dir: &Path, start: Offset) {
    let path = segment::path(dir, start);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            warn!(path = %path.display(), error = %e, "cannot delete acknowledged buffer segment");
        }
        _ => {}
    }
}

fn create_segment(dir: &Path, start: Offset, sealed: bool) -> Result<File, LogError> {
    let path = segment::path(dir, start);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    file.write_all(&segment::header(sealed))
        .and_then(|()| file.sync_data())
        .map_err(|e| io_err(&path, e))?;
    Ok(file)
}

/// Returns whether to keep the segment, and how many bytes were discarded.
fn check_segment_header(
    dir: &Path,
    start: Offset,
    last: bool,
    sealed_mode: bool,
) -> Result<(bool, u64), LogError> {
    let path = segment::path(dir, start);
    let mut head = Vec::with_capacity(segment::HEADER_LEN as usize);
    let len = File::open(&path)
        .and_then(|mut f| {
            (&mut f).take(segment::HEADER_LEN).read_to_end(&mut head)?;
            Ok(f.metadata()?.len())
        })
        .map_err(|e| io_err(&path, e))?;
    match segment::check_header(&head) {
        HeaderState::Valid { sealed } if sealed == sealed_mode => Ok((true, 0)),
        // The newest segment without records: a roll just before the mode changed.
        HeaderState::Valid { .. } if last && len <= segment::HEADER_LEN => {
            create_segment(dir, start, sealed_mode)?;
            Ok((true, 0))
        }
        HeaderState::Valid { sealed } => Err(LogError::EncryptionMismatch {
            path,
            encrypted: sealed,
        }),
        HeaderState::Unsupported(found) => Err(LogError::UnsupportedVersion {
            path,
            found,
            supported: segment::VERSION,
        }),
        // A torn header can only be the newest segment (older ones were fsynced before the
        // roll); it holds no records, so start it over.
        HeaderState::Torn if last => {
            create_segment(dir, start, sealed_mode)?;
            warn!(path = %path.display(), "rewrote torn buffer segment header");
            Ok((true, len))
        }
        HeaderState::Torn | HeaderState::Corrupt => {
            let aside = path.with_extension("corrupt");
            fs::rename(&path, &aside).map_err(|e| io_err(&path, e))?;
            error!(
                path = %aside.display(),
                bytes = len,
                "buffer segment has no valid header; set aside and skipped"
            );
            Ok((false, len))
        }
    }
}

/// Scans the last segment and truncates a torn or corrupt tail. Returns the length of the
/// kept record data and the number of bytes cut off.
fn recover_tail(dir: &Path, start: Offset) -> Result<(u64, u64), LogError> {
    let path = segment::path(dir, start);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    let err = |e| io_err(&path, e);
    let limit = file
        .metadata()
        .map_err(err)?
        .len()
        .saturating_sub(segment::HEADER_LEN);
    let mut pos = 0;
    loop {
        let frame = segment::frame_at(&file, pos, limit).map_err(err)?;
        match frame {
            segment::Frame::Record(_) => {}
            segment::Frame::BadCrc { .. } => {
                // Damage in the middle (a good record follows) is left for the reader to skip;
                // at the very end it is indistinguishable from a torn write.
                let after = pos + frame.disk_len().unwrap_or(0);
                let next = segment::frame_at(&file, after, limit).map_err(err)?;
                if !matches!(next, segment::Frame::Record(_)) {
                    break;
                }
            }
            segment::Frame::BadLength | segment::Frame::Incomplete | segment::Frame::End => {
                break;
            }
        }
        pos += frame.disk_len().unwrap_or(0);
    }
    let truncated = limit - pos;
    if truncated > 0 {
        file.set_len(segment::HEADER_LEN + pos).map_err(err)?;
        warn!(
            path = %path.display(),
            kept_bytes = pos,
            truncated_bytes = truncated,
            "truncated torn or corrupt buffer tail"
        );
    }
    // Whatever survived the crash is made durable before anything can be sent from it.
    file.sync_all().map_err(err)?;
    Ok((pos, truncated))
}

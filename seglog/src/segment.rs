//! Segment files: naming, the 8-byte header and record framing (layout in the parent module).

use crate::Offset;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes before the first record of a segment.
pub(super) const HEADER_LEN: u64 = 8;
/// `[len u32][crc32 u32]` before every payload.
pub(super) const FRAME_HEADER_LEN: u64 = 8;
/// Largest payload one record may hold. A length field above this is corruption, not a record,
/// which keeps a flipped bit from making us allocate gigabytes.
pub(super) const MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;
/// Segment format version of plain records.
pub(super) const VERSION: u8 = 1;
/// Segment format version of sealed records (`crypt` sealed records; see the crate docs).
pub(super) const SEALED_VERSION: u8 = 2;

const MAGIC: [u8; 4] = *b"UPDS";
const EXTENSION: &str = "seg";

/// The header every segment starts with.
pub(super) fn header(sealed: bool) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = if sealed { SEALED_VERSION } else { VERSION };
    h
}

/// What the first bytes of a segment file say about it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HeaderState {
    /// A known version; `sealed`: its records are encrypted.
    Valid { sealed: bool },
    /// Shorter than a header, or all zeros: the file was created but its header never reached
    /// the disk (a crash right after a roll). It holds no records.
    Torn,
    /// Our magic with a version this build does not know.
    Unsupported(u8),
    /// Not a segment header at all.
    Corrupt,
}

pub(super) fn check_header(bytes: &[u8]) -> HeaderState {
    if bytes.len() < HEADER_LEN as usize || bytes.iter().all(|b| *b == 0) {
        return HeaderState::Torn;
    }
    if bytes[..4] != MAGIC || bytes[5..8] != [0, 0, 0] {
        return HeaderState::Corrupt;
    }
    match bytes[4] {
        VERSION => HeaderState::Valid { sealed: false },
        SEALED_VERSION => HeaderState::Valid { sealed: true },
        other => HeaderState::Unsupported(other),
    }
}

/// `<dir>/<start offset, 20 digits>.seg`: lexical order is offset order.
pub(super) fn path(dir: &Path, start: Offset) -> PathBuf {
    dir.join(format!("{:020}.{EXTENSION}", start.0))
}

/// The start offset encoded in a segment file name, or `None` for any other file.
pub(super) fn parse_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// `[len u32 LE][crc32 u32 LE][payload]`. The caller has checked the length limit.
pub(super) fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN as usize + payload.len());
    // Lossless: callers reject payloads above MAX_RECORD_BYTES, which fits in u32.
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// One attempt to read a frame at a record boundary.
#[derive(Debug)]
pub(super) enum Frame {
    /// A complete record whose checksum matches.
    Record(Vec<u8>),
    /// Length plausible and payload present, checksum wrong: `len` says how far to skip.
    BadCrc { len: u32 },
    /// The length field exceeds [`MAX_RECORD_BYTES`]; nothing after it can be trusted.
    BadLength,
    /// Fewer bytes remain than the header or the length announces: a torn write.
    Incomplete,
    /// Exactly at the limit: no more records.
    End,
}

impl Frame {
    /// Bytes this frame occupies on disk, when known.
    pub(super) fn disk_len(&self) -> Option<u64> {
        match self {
            Frame::Record(p) => Some(FRAME_HEADER_LEN + p.len() as u64),
            Frame::BadCrc { len } => Some(FRAME_HEADER_LEN + u64::from(*len)),
            Frame::BadLength | Frame::Incomplete | Frame::End => None,
        }
    }
}

/// Reads one frame from `r`, never looking at more than `available` bytes.
pub(super) fn read_frame(r: &mut impl Read, available: u64) -> io::Result<Frame> {
    if available == 0 {
        return Ok(Frame::End);
    }
    if available < FRAME_HEADER_LEN {
        return Ok(Frame::Incomplete);
    }
    let mut head = [0u8; FRAME_HEADER_LEN as usize];
    r.read_exact(&mut head)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len > MAX_RECORD_BYTES {
        return Ok(Frame::BadLength);
    }
    if FRAME_HEADER_LEN + u64::from(len) > available {
        return Ok(Frame::Incomplete);
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) == crc {
        Ok(Frame::Record(payload))
    } else {
        Ok(Frame::BadCrc { len })
    }
}

/// Reads the frame starting `rel` bytes after the header, with `limit` data bytes in the file.
pub(super) fn frame_at(file: &std::fs::File, rel: u64, limit: u64) -> io::Result<Frame> {
    let mut r = io::BufReader::new(file);
    r.seek(SeekFrom::Start(HEADER_LEN + rel))?;
    read_frame(&mut r, limit.saturating_sub(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_offset() {
        let dir = Path::new("/x");
        let p = path(dir, Offset(1_048_576));
        let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8");
        assert_eq!(name, "00000000000001048576.seg");
        assert_eq!(parse_name(name), Some(Offset(1_048_576)));
        assert_eq!(parse_name("ack"), None);
        assert_eq!(parse_name("123.seg"), None);
        assert_eq!(parse_name("0000000000000000000x.seg"), None);
    }

    #[test]
    fn frames_detect_every_kind_of_damage() {
        let frame = encode_frame(b"hello");
        let read = |bytes: &[u8]| read_frame(&mut &bytes[..], bytes.len() as u64).expect("io");
        assert!(matches!(read(&frame), Frame::Record(p) if p == b"hello"));
        assert!(matches!(read(&frame[..10]), Frame::Incomplete));
        assert!(matches!(read(&frame[..3]), Frame::Incomplete));
        assert!(matches!(read(&[]), Frame::End));
        let mut flipped = frame.clone();
        flipped[9] ^= 1;
        assert!(matches!(read(&flipped), Frame::BadCrc { len: 5 }));
        let mut huge = frame;
        huge[3] = 0xff;
        assert!(matches!(read(&huge), Frame::BadLength));
    }

    #[test]
    fn header_states() {
        assert_eq!(
            check_header(&header(false)),
            HeaderState::Valid { sealed: false }
        );
        assert_eq!(
            check_header(&header(true)),
            HeaderState::Valid { sealed: true }
        );
        assert_eq!(check_header(&[0; 8]), HeaderState::Torn);
        assert_eq!(check_header(&header(false)[..5]), HeaderState::Torn);
        let mut future = header(false);
        future[4] = 9;
        assert_eq!(check_header(&future), HeaderState::Unsupported(9));
        assert_eq!(check_header(b"garbage!"), HeaderState::Corrupt);
    }
}

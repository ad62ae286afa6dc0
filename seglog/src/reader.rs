//! Reading durable records and acknowledging them.

use crate::{Epoch, LogError, Offset, Shared, cursor, io_err, remove_segment, segment};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use tracing::{error, warn};

/// Reads records below the durable end and acknowledges them. Cheap to clone; reads take
/// their position as an argument and keep no state.
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub start: Offset,
    pub end: Offset,
    pub payload: Vec<u8>,
}

/// The result of one [`LogReader::read`].
#[derive(Debug, Default)]
pub struct ReadChunk {
    pub records: Vec<ReadRecord>,
    /// Where the next read continues; past any corrupt bytes skipped on the way.
    pub next: Offset,
    /// Bytes skipped because they failed their checksum or could not be framed.
    pub corrupt_bytes: u64,
}

impl LogReader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub fn epoch(&self) -> Epoch {
        self.shared.epoch
    }

    pub fn acked(&self) -> Offset {
        self.shared.acked()
    }

    pub fn durable_end(&self) -> Offset {
        self.shared.durable_end()
    }

    /// Start offsets of the live segments, oldest first; the last one is being written.
    pub fn segment_starts(&self) -> Vec<Offset> {
        self.shared.segments().clone()
    }

    /// Bytes on disk a core has not acknowledged yet.
    pub fn unacked_bytes(&self) -> u64 {
        self.durable_end().0.saturating_sub(self.acked().0)
    }

    /// Reads whole records starting at `from` (a record boundary, e.g. the previous
    /// [`ReadChunk::next`]) until about `max_bytes` of payload or the durable end.
    pub fn read(&self, from: Offset, max_bytes: usize) -> Result<ReadChunk, LogError> {
        let mut chunk = ReadChunk {
            next: from,
            ..ReadChunk::default()
        };
        let mut payload_bytes = 0;
        loop {
            let durable = self.shared.durable_end();
            let pos = chunk.next;
            if pos >= durable || payload_bytes >= max_bytes {
                return Ok(chunk);
            }
            let (start, following) = {
                let segments = self.shared.segments();
                match segments.iter().rposition(|s| *s <= pos) {
                    Some(i) => (segments[i], segments.get(i + 1).copied()),
                    // Below the oldest segment (deleted by hand): continue at the oldest.
                    None => match segments.first() {
                        Some(first) => {
                            chunk.next = *first;
                            continue;
                        }
                        None => return Ok(chunk),
                    },
                }
            };
            let path = segment::path(&self.shared.dir, start);
            let file = File::open(&path).map_err(|e| io_err(&path, e))?;
            let data_len = file
                .metadata()
                .map_err(|e| io_err(&path, e))?
                .len()
                .saturating_sub(segment::HEADER_LEN);
            // Sealed segments were fsynced whole at the roll; the active one only to `durable`.
            let limit = data_len.min(durable.0 - start.0);
            let mut rel = pos.0 - start.0;
            let mut r = BufReader::new(file);
            r.seek(SeekFrom::Start(segment::HEADER_LEN + rel))
                .map_err(|e| io_err(&path, e))?;
            loop {
                if payload_bytes >= max_bytes {
                    return Ok(chunk);
                }
                let frame = segment::read_frame(&mut r, limit.saturating_sub(rel))
                    .map_err(|e| io_err(&path, e))?;
                let at = Offset(start.0 + rel);
                match frame {
                    segment::Frame::Record(payload) => {
                        let end = Offset(at.0 + segment::FRAME_HEADER_LEN + payload.len() as u64);
                        payload_bytes += payload.len();
                        let payload = match &self.shared.cipher {
                            None => payload,
                            Some(c) => match c.open(b"", &payload) {
                                Ok(p) => p,
                                Err(e) => {
                                    let skip = end.0 - at.0;
                                    error!(offset = %at, bytes = skip, error = %e, "skipping buffer record that does not decrypt");
                                    chunk.corrupt_bytes += skip;
                                    rel = end.0 - start.0;
                                    chunk.next = end;
                                    continue;
                                }
                            },
                        };
                        chunk.records.push(ReadRecord {
                            start: at,
                            end,
                            payload,
                        });
                        rel = end.0 - start.0;
                        chunk.next = end;
                    }
                    segment::Frame::BadCrc { len } => {
                        let skip = segment::FRAME_HEADER_LEN + u64::from(len);
                        warn!(offset = %at, bytes = skip, "skipping buffer record with bad checksum");
                        chunk.corrupt_bytes += skip;
                        rel += skip;
                        chunk.next = Offset(at.0 + skip);
                    }
                    segment::Frame::BadLength | segment::Frame::Incomplete => {
                        // No way to find the next record boundary in this segment: continue
                        // with the next segment, or at the durable end of the active one
                        // (where the writer's next record will start).
                        let resume = following.unwrap_or(durable);
                        warn!(
                            offset = %at,
                            bytes = resume.0 - at.0,
                            "skipping unreadable rest of buffer segment"
                        );
                        chunk.corrupt_bytes += resume.0 - at.0;
                        chunk.next = resume;
                        break;
                    }
                    segment::Frame::End => {
                        // Segment read to its limit: move on if a newer segment exists.
                        match following {
                            Some(next) if rel >= data_len => chunk.next = next.max(chunk.next),
                            _ => return Ok(chunk),
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Records that everything below `upto` (a record boundary) is acknowledged: persists the
    /// cursor atomically, then deletes segments that lie wholly below it.
    pub fn ack(&self, upto: Offset) -> Result<(), LogError> {
        let _serial = self
            .shared
            .ack_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if upto <= self.shared.acked() {
            return Ok(());
        }
        let durable = self.shared.durable_end();
        if upto > durable {
            return Err(LogError::AckBeyondEnd {
                requested: upto,
                durable,
            });
        }
        let c = cursor::Cursor {
            epoch: self.shared.epoch,
            acked: upto,
        };
        cursor::store(&self.shared.dir, &c)?;
        self.shared.acked.store(upto.0, Ordering::Release);
        let doomed: Vec<Offset> = {
            let mut segments = self.shared.segments();
            let keep_from = segments
                .iter()
                .rposition(|s| *s <= upto)
                .unwrap_or(0)
                .min(segments.len().saturating_sub(1));
            segments.drain(..keep_from).collect()
        };
        for start in doomed {
            remove_segment(&self.shared.dir, start);
        }
        Ok(())
    }
}

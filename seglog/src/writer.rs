//! The single appender of the buffer.

use crate::{LogError, LogOptions, Offset, Shared, io_err, segment, sync_dir};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Appends records to the last segment and makes them durable with [`LogWriter::sync`].
///
/// A failed write or fsync poisons the writer: after a failed fsync the kernel may have dropped
/// the dirty pages, so "retrying" could report durability for data that is gone. The owner
/// must stop and let a restart recover from what is really on disk.
#[derive(Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
    file: File,
    path: PathBuf,
    /// Record bytes in the current segment (header excluded).
    segment_len: u64,
    /// End of the last appended record, durable or not.
    end: Offset,
    /// A segment was created since the last directory fsync.
    dir_dirty: bool,
    poisoned: bool,
    options: LogOptions,
}

impl LogWriter {
    pub(super) fn resume(
        shared: Arc<Shared>,
        segment_start: Offset,
        end: Offset,
        options: LogOptions,
    ) -> Result<Self, LogError> {
        let path = segment::path(&shared.dir, segment_start);
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let segment_len = end.0 - segment_start.0;
        file.seek(SeekFrom::Start(segment::HEADER_LEN + segment_len))
            .map_err(|e| io_err(&path, e))?;
        Ok(Self {
            shared,
            file,
            path,
            segment_len,
            end,
            dir_dirty: false,
            poisoned: false,
            options,
        })
    }

    /// End of the last appended record, durable or not (the durable end trails it until the
    /// next [`LogWriter::sync`]).
    pub fn end(&self) -> Offset {
        self.end
    }

    /// Appends one record and returns its end offset. Readers see it after the next
    /// [`LogWriter::sync`]. The payload is borrowed, so on error the caller still has it.
    pub fn append(&mut self, payload: &[u8]) -> Result<Offset, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if payload.len() > segment::MAX_RECORD_BYTES as usize {
            return Err(LogError::RecordTooLarge {
                len: payload.len(),
                max: segment::MAX_RECORD_BYTES,
            });
        }
        let sealed;
        let payload = match &self.shared.cipher {
            Some(c) => {
                sealed = c.seal(b"", payload)?;
                &sealed[..]
            }
            None => payload,
        };
        if payload.len() > segment::MAX_RECORD_BYTES as usize {
            return Err(LogError::RecordTooLarge {
                len: payload.len(),
                max: segment::MAX_RECORD_BYTES,
            });
        }
        let frame = segment::encode_frame(payload);
        let frame_len = frame.len() as u64;
        if self.segment_len > 0 && self.segment_len + frame_len > self.options.segment_max_bytes {
            self.roll()?;
        }
        if let Err(e) = self.file.write_all(&frame) {
            // Part of the frame may be in the file; only recovery can cut it off cleanly.
            self.poisoned = true;
            return Err(io_err(&self.path, e));
        }
        self.segment_len += frame_len;
        self.end = Offset(self.end.0 + frame_len);
        Ok(self.end)
    }

    /// Fsyncs everything appended so far (one call per burst: group commit) and publishes the
    /// new durable end to readers.
    pub fn sync(&mut self) -> Result<Offset, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(io_err(&self.path, e));
        }
        if self.dir_dirty {
            if let Err(e) = sync_dir(&self.shared.dir) {
                self.poisoned = true;
                return Err(e);
            }
            self.dir_dirty = false;
        }
        self.shared.durable_end.store(self.end.0, Ordering::Release);
        Ok(self.end)
    }

    /// Starts a new segment at the current end when the current one holds at least
    /// `min_bytes` of records, and makes the change durable (file and directory fsynced).
    /// Segments are deleted only whole: once everything up to the end is acknowledged, a
    /// rolled segment can go, where the current one would have stayed until it filled up.
    /// Returns whether it rolled.
    pub fn roll_at(&mut self, min_bytes: u64) -> Result<bool, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if self.segment_len == 0 || self.segment_len < min_bytes {
            return Ok(false);
        }
        self.roll()?;
        self.sync()?;
        Ok(true)
    }

    /// Seals the current segment (fsynced, so readers may read it to its end) and starts the
    /// next one at the current end offset.
    fn roll(&mut self) -> Result<(), LogError> {
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(io_err(&self.path, e));
        }
        let file =
            match crate::create_segment(&self.shared.dir, self.end, self.shared.cipher.is_some()) {
                Ok(f) => f,
                Err(e) => {
                    self.poisoned = true;
                    return Err(e);
                }
            };
        self.file = file;
        self.path = segment::path(&self.shared.dir, self.end);
        self.segment_len = 0;
        self.dir_dirty = true;
        self.shared.segments().push(self.end);
        Ok(())
    }
}

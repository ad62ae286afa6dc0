//! Streaming decode: one block of samples at a time, into buffers inside the iterator, so a
//! query can walk a chunk (or stop early) without materialising it.

use std::iter::FusedIterator;

use super::timestamps::TsDecoder;
use super::values::ValueDecoder;
use super::{BLOCK, ChunkHeader, CodecError, parse};
use crate::model::Sample;

/// Iterates a chunk's samples in timestamp order. Allocates nothing; holds one decoded block
/// (128 samples) at a time.
///
/// Corruption that the CRC cannot catch (a buggy or hostile encoder) surfaces as an `Err` item,
/// after which the iterator ends. A block is checked before any of its samples is yielded, and
/// the end of the chunk before the last block is, so an `Err` never follows wrong samples from
/// the same block.
#[derive(Debug, Clone)]
pub struct ChunkIter<'a> {
    header: ChunkHeader,
    ts: TsDecoder<'a>,
    values: ValueDecoder<'a>,
    count: usize,
    /// Samples decoded into the buffers so far (all blocks up to the current one).
    decoded: usize,
    /// Next sample to yield from the buffers, and how many they hold.
    pos: usize,
    len: usize,
    /// Set once the iterator has failed; `pending` is the error not yet yielded.
    failed: bool,
    pending: Option<CodecError>,
    /// Timestamp of the last sample decoded so far.
    last_ts: i64,
    ts_buf: [i64; BLOCK],
    val_buf: [f64; BLOCK],
    scratch: [u64; BLOCK],
}

impl<'a> ChunkIter<'a> {
    /// Checks the header and the CRC, and prepares to decode.
    pub fn new(chunk: &'a [u8]) -> Result<Self, CodecError> {
        let p = parse(chunk)?;
        let h = p.header;
        let count = h.count as usize;
        Ok(Self {
            ts: TsDecoder::new(h.ts_encoding, p.ts_section, count, h.min_ts, h.max_ts)?,
            values: ValueDecoder::new(h.value_encoding, p.value_section, count)?,
            header: h,
            count,
            decoded: 0,
            pos: 0,
            len: 0,
            failed: false,
            pending: None,
            last_ts: h.min_ts,
            ts_buf: [0; BLOCK],
            val_buf: [0.0; BLOCK],
            scratch: [0; BLOCK],
        })
    }

    pub fn header(&self) -> &ChunkHeader {
        &self.header
    }

    /// Moves forward to the first remaining sample with a timestamp ≥ `ts`: the next call to
    /// `next` returns it (or `None` if there is none). Never moves backwards: seeking to a
    /// timestamp at or before the next sample's changes nothing; create a new iterator to go
    /// back. Blocks passed over are still decoded (their values carry state into the next
    /// block), but samples are not yielded one by one, and a timestamp past `max_ts` ends the
    /// iterator without decoding anything. An error met on the way is returned by `next`.
    pub fn seek(&mut self, ts: i64) {
        if self.failed {
            return;
        }
        loop {
            let buffered = &self.ts_buf[self.pos..self.len];
            if buffered.last().is_some_and(|&last| last >= ts) {
                self.pos += buffered.partition_point(|&t| t < ts);
                return;
            }
            self.pos = self.len;
            if self.decoded == self.count {
                return;
            }
            if ts > self.header.max_ts {
                // Nothing left can qualify; end without decoding the rest.
                self.decoded = self.count;
                return;
            }
            if let Err(e) = self.refill() {
                self.fail(e);
                return;
            }
        }
    }

    fn fail(&mut self, e: CodecError) {
        self.failed = true;
        self.pending = Some(e);
        self.pos = 0;
        self.len = 0;
    }

    /// Decodes the next block into the buffers and checks it.
    fn refill(&mut self) -> Result<(), CodecError> {
        let start = self.decoded;
        let n = BLOCK.min(self.count - start);
        let ts = &mut self.ts_buf[..n];
        self.ts.fill(start, ts, &mut self.scratch)?;
        // Strictly ascending, continuing from the previous block (the first timestamp is
        // min_ts by construction of every encoding).
        let mut prev = self.last_ts;
        let from = usize::from(start == 0);
        if from == 1 {
            prev = ts[0];
        }
        for &t in &ts[from..] {
            if t <= prev {
                return Err(CodecError::corrupt("timestamps not ascending"));
            }
            prev = t;
        }
        self.last_ts = prev;
        self.values
            .fill(start, &mut self.val_buf[..n], &mut self.scratch)?;
        self.decoded += n;
        if self.decoded == self.count {
            if prev != self.header.max_ts {
                return Err(CodecError::corrupt("last timestamp is not max_ts"));
            }
            self.ts.finish()?;
            self.values.finish()?;
        }
        self.pos = 0;
        self.len = n;
        Ok(())
    }

    /// Decodes everything that is left into a vector.
    pub(crate) fn collect_all(mut self) -> Result<Vec<Sample>, CodecError> {
        // `count` is bounded by the input's length (see the module invariants).
        let mut out = Vec::with_capacity(self.count - self.decoded + (self.len - self.pos));
        loop {
            out.extend(
                self.ts_buf[self.pos..self.len]
                    .iter()
                    .zip(&self.val_buf[self.pos..self.len])
                    .map(|(&t, &v)| Sample::new(t, v)),
            );
            self.pos = self.len;
            if let Some(e) = self.pending.take() {
                return Err(e);
            }
            if self.decoded == self.count || self.failed {
                return Ok(out);
            }
            self.refill()?;
        }
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<Sample, CodecError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos == self.len {
            if let Some(e) = self.pending.take() {
                return Some(Err(e));
            }
            if self.failed || self.decoded == self.count {
                return None;
            }
            if let Err(e) = self.refill() {
                self.fail(e);
                return self.pending.take().map(Err);
            }
        }
        let s = Sample::new(self.ts_buf[self.pos], self.val_buf[self.pos]);
        self.pos += 1;
        Some(Ok(s))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.failed {
            return (0, Some(usize::from(self.pending.is_some())));
        }
        // Every remaining sample, or fewer and one error.
        let left = self.len - self.pos + self.count - self.decoded;
        (0, Some(left + 1))
    }
}

impl FusedIterator for ChunkIter<'_> {}

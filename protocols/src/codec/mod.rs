//! The chunk codec: the samples of one series, compressed, as edge agents ship them and core
//! nodes store them.
//!
//! # Byte layout (format version 1)
//!
//! ```text
//! u8       version (FORMAT_VERSION)
//! u8       encodings: timestamp encoding id << 4 | value encoding id
//! uvarint  count: samples in the chunk, 1 ..= MAX_SAMPLES
//! varint   min_ts: the first timestamp (ms, zigzag)
//! uvarint  max_ts − min_ts, modulo 2⁶⁴                     (count ≥ 2 only)
//! uvarint  timestamp section length in bytes               (count ≥ 2 only)
//! ...      timestamp section  (timestamps.rs: delta-of-delta 0, grid 1)
//! ...      value section      (values.rs, decimal.rs: constant 0, run-length 1, decimal 2,
//!                              decimal delta 3, decimal delta-of-delta 4, XOR 5, float bits 6,
//!                              float-bits delta 7, float-bits delta-of-delta 8)
//! ...      zero padding, only where the invariant on count needs it
//! u32 LE   CRC32C of every byte before it
//! ```
//!
//! Varints are LEB128; signed ones are zigzag-mapped first. Bit streams are MSB first (as
//! Prometheus'); bit-packed arrays are LSB first. Each section's layout is documented in the
//! module that owns it.
//!
//! # Invariants
//!
//! - Timestamps are strictly ascending; the first is `min_ts` and the last `max_ts`. Decoders
//!   check this and report [`CodecError::Corrupt`] otherwise.
//! - Values round-trip bit for bit: NaN payloads (the stale marker `0x7ff0000000000002`
//!   included), ±Inf, −0.0 and subnormals.
//! - `count ≤ MAX_SAMPLES_PER_BYTE × chunk length`. The encoder pads with zeros when a chunk
//!   would be smaller (only constant or run-length values on an exact grid get there), so a
//!   decoder's allocations are bounded by the input's length: [`decode`] allocates at most
//!   16 × 64 bytes per input byte, [`ChunkIter`] nothing.
//! - The samples are split into blocks of 128 (the last may be short); block-structured
//!   sections (decimal values) align with them, so the iterator decodes one block at a time.
//! - Decoding never panics, whatever the bytes; each section is checked to be consumed exactly,
//!   up to the padding.
//!
//! # Compatibility rule
//!
//! [`FORMAT_VERSION`] grows whenever the meaning of any byte changes; new encodings get new ids
//! and a new version. Decoders accept every version up to their own and reject newer ones with
//! [`CodecError::UnsupportedVersion`] (checked before the CRC, since a newer layout may place
//! it elsewhere). Encoders write only the current version. Chunks are stored for years, so a
//! version's decoder is never removed.

mod bits;
mod decimal;
mod error;
pub mod gorilla;
mod iter;
mod timestamps;
mod values;
mod xor;

#[cfg(test)]
mod tests;

pub use error::CodecError;
pub use iter::ChunkIter;

use crate::model::Sample;
use bits::{Cursor, put_uvarint, put_varint};

/// The format version this encoder writes and the newest this decoder reads.
pub const FORMAT_VERSION: u8 = 1;
/// Most samples one chunk may hold.
pub const MAX_SAMPLES: usize = 1 << 20;
/// A valid chunk holds at most this many samples per byte of its length (see the invariants).
pub const MAX_SAMPLES_PER_BYTE: usize = 64;
/// Samples per block: the unit of bit packing and of streaming.
pub(crate) const BLOCK: usize = 128;

const CRC_BYTES: usize = 4;

/// How a chunk's timestamps are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TsEncoding {
    /// Delta-of-delta with Gorilla-style variable-length buckets.
    DeltaOfDelta,
    /// Offsets from a regular grid (interval, bit-packed jitter, missed-tick exceptions).
    Grid,
}

impl TsEncoding {
    fn id(self) -> u8 {
        match self {
            Self::DeltaOfDelta => 0,
            Self::Grid => 1,
        }
    }

    fn from_id(id: u8) -> Result<Self, CodecError> {
        match id {
            0 => Ok(Self::DeltaOfDelta),
            1 => Ok(Self::Grid),
            id => Err(CodecError::UnknownEncoding {
                what: "timestamp",
                id,
            }),
        }
    }
}

/// How a chunk's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValueEncoding {
    /// One value for every sample.
    Const,
    /// Runs of bit-identical values (states, stuck sensors).
    RunLength,
    /// Scaled decimal integers, bit-packed per block.
    Decimal,
    /// Scaled decimal integers as deltas (gauges, random walks).
    DecimalDelta,
    /// Scaled decimal integers as deltas of deltas (counters, smooth curves).
    DecimalDeltaOfDelta,
    /// Gorilla XOR (full-precision floats).
    Xor,
    /// Order-mapped float bits, bit-packed per block (full-precision values in a narrow range).
    FloatBits,
    /// Order-mapped float bits as deltas (full-precision noise and float counters).
    FloatBitsDelta,
    /// Order-mapped float bits as deltas of deltas (smooth full-precision curves).
    FloatBitsDeltaOfDelta,
}

impl ValueEncoding {
    fn id(self) -> u8 {
        match self {
            Self::Const => 0,
            Self::RunLength => 1,
            Self::Decimal => 2,
            Self::DecimalDelta => 3,
            Self::DecimalDeltaOfDelta => 4,
            Self::Xor => 5,
            Self::FloatBits => 6,
            Self::FloatBitsDelta => 7,
            Self::FloatBitsDeltaOfDelta => 8,
        }
    }

    fn from_id(id: u8) -> Result<Self, CodecError> {
        Ok(match id {
            0 => Self::Const,
            1 => Self::RunLength,
            2 => Self::Decimal,
            3 => Self::DecimalDelta,
            4 => Self::DecimalDeltaOfDelta,
            5 => Self::Xor,
            6 => Self::FloatBits,
            7 => Self::FloatBitsDelta,
            8 => Self::FloatBitsDeltaOfDelta,
            id => return Err(CodecError::UnknownEncoding { what: "value", id }),
        })
    }

    /// The integer-stream transform, and whether the integers are float bits.
    fn transform(self) -> Option<(decimal::Transform, bool)> {
        use decimal::Transform::{Delta, DeltaOfDelta, Raw};
        match self {
            Self::Decimal => Some((Raw, false)),
            Self::DecimalDelta => Some((Delta, false)),
            Self::DecimalDeltaOfDelta => Some((DeltaOfDelta, false)),
            Self::FloatBits => Some((Raw, true)),
            Self::FloatBitsDelta => Some((Delta, true)),
            Self::FloatBitsDeltaOfDelta => Some((DeltaOfDelta, true)),
            Self::Const | Self::RunLength | Self::Xor => None,
        }
    }

    fn from_transform(t: decimal::Transform, scale: decimal::Scale) -> Self {
        use decimal::Transform::{Delta, DeltaOfDelta, Raw};
        match (t, scale) {
            (Raw, decimal::Scale::Decimal(_)) => Self::Decimal,
            (Delta, decimal::Scale::Decimal(_)) => Self::DecimalDelta,
            (DeltaOfDelta, decimal::Scale::Decimal(_)) => Self::DecimalDeltaOfDelta,
            (Raw, decimal::Scale::FloatBits) => Self::FloatBits,
            (Delta, decimal::Scale::FloatBits) => Self::FloatBitsDelta,
            (DeltaOfDelta, decimal::Scale::FloatBits) => Self::FloatBitsDeltaOfDelta,
        }
    }
}

/// What a chunk's header says, read without decoding the body (the CRC is checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChunkHeader {
    pub version: u8,
    /// Samples in the chunk (≥ 1).
    pub count: u32,
    /// Timestamp of the first sample (ms).
    pub min_ts: i64,
    /// Timestamp of the last sample (ms).
    pub max_ts: i64,
    pub ts_encoding: TsEncoding,
    pub value_encoding: ValueEncoding,
}

/// Encodes samples of one series (ascending, unique timestamps), choosing the smallest
/// encodings for this chunk.
pub fn encode(samples: &[Sample]) -> Result<Vec<u8>, CodecError> {
    Encoder::new().encode(samples)
}

/// Decodes a whole chunk.
pub fn decode(chunk: &[u8]) -> Result<Vec<Sample>, CodecError> {
    ChunkIter::new(chunk)?.collect_all()
}

/// Header fields without decoding the body (CRC checked).
pub fn header(chunk: &[u8]) -> Result<ChunkHeader, CodecError> {
    parse(chunk).map(|p| p.header)
}

/// An encoder whose choices can be pinned (for tests, benchmarks and experiments); the default
/// measures and picks per chunk, as [`encode`] does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Encoder {
    ts: Option<TsEncoding>,
    values: Option<ValueEncoding>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Always use this timestamp encoding (chunks of one sample have no timestamp section and
    /// report delta-of-delta).
    pub fn ts_encoding(mut self, encoding: TsEncoding) -> Self {
        self.ts = Some(encoding);
        self
    }

    /// Always use this value encoding; [`ValueEncoding::Const`] fails on values that differ.
    pub fn value_encoding(mut self, encoding: ValueEncoding) -> Self {
        self.values = Some(encoding);
        self
    }

    pub fn encode(&self, samples: &[Sample]) -> Result<Vec<u8>, CodecError> {
        let n = samples.len();
        if n == 0 {
            return Err(CodecError::Empty);
        }
        if n > MAX_SAMPLES {
            return Err(CodecError::TooManySamples {
                count: n,
                max: MAX_SAMPLES,
            });
        }
        let ts: Vec<i64> = samples.iter().map(|s| s.timestamp_ms).collect();
        if let Some(i) = ts.windows(2).position(|w| w[1] <= w[0]) {
            return Err(CodecError::Unsorted { index: i + 1 });
        }
        let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
        let ts_plan = timestamps::plan(&ts, self.ts);
        let value_plan = values::plan(&values, self.values)?;

        let mut ts_section = Vec::new();
        timestamps::write(&ts, &ts_plan, &mut ts_section);
        let mut out = Vec::with_capacity(32 + ts_section.len() + n * 2);
        out.push(FORMAT_VERSION);
        out.push(ts_plan.encoding().id() << 4 | value_plan.encoding().id());
        put_uvarint(&mut out, n as u64);
        put_varint(&mut out, ts[0]);
        if n >= 2 {
            put_uvarint(&mut out, ts[n - 1].wrapping_sub(ts[0]) as u64);
            put_uvarint(&mut out, ts_section.len() as u64);
        }
        out.extend_from_slice(&ts_section);
        values::write(&values, &value_plan, &mut out);
        let min_len = n.div_ceil(MAX_SAMPLES_PER_BYTE);
        if out.len() + CRC_BYTES < min_len {
            out.resize(min_len - CRC_BYTES, 0);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

/// A chunk split into its header and sections.
pub(crate) struct Parsed<'a> {
    pub(crate) header: ChunkHeader,
    pub(crate) ts_section: &'a [u8],
    pub(crate) value_section: &'a [u8],
}

pub(crate) fn parse(chunk: &[u8]) -> Result<Parsed<'_>, CodecError> {
    let version = *chunk.first().ok_or(CodecError::truncated("header"))?;
    if version == 0 || version > FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion {
            version,
            max: FORMAT_VERSION,
        });
    }
    let body_len = chunk
        .len()
        .checked_sub(CRC_BYTES)
        .ok_or(CodecError::truncated("checksum"))?;
    let (body, crc) = chunk.split_at(body_len);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }

    let mut c = Cursor::new(body);
    c.u8("version")?;
    let encodings = c.u8("encodings")?;
    let ts_encoding = TsEncoding::from_id(encodings >> 4)?;
    let value_encoding = ValueEncoding::from_id(encodings & 0x0f)?;
    let max_count = MAX_SAMPLES.min(chunk.len().saturating_mul(MAX_SAMPLES_PER_BYTE));
    let count = c.bounded(max_count as u64, "sample count")?;
    if count == 0 {
        return Err(CodecError::corrupt("sample count is zero"));
    }
    let min_ts = c.varint("first timestamp")?;
    let (max_ts, ts_len) = if count >= 2 {
        let span = c.uvarint("timestamp span")?;
        let max_ts = i64::try_from(i128::from(min_ts) + i128::from(span))
            .map_err(|_| CodecError::corrupt("timestamp span past i64::MAX"))?;
        if span == 0 {
            return Err(CodecError::corrupt("timestamp span is zero"));
        }
        (
            max_ts,
            c.bounded(body.len() as u64, "timestamp section length")?,
        )
    } else {
        (min_ts, 0)
    };
    let ts_section = c.bytes(ts_len, "timestamp section")?;
    Ok(Parsed {
        header: ChunkHeader {
            version,
            count: count as u32,
            min_ts,
            max_ts,
            ts_encoding,
            value_encoding,
        },
        ts_section,
        value_section: c.remaining(),
    })
}

//! The timestamp section: delta-of-delta with Gorilla-style buckets, or offsets from a grid.
//!
//! The first timestamp is the header's `min_ts` and is never repeated here. All arithmetic is
//! modulo 2⁶⁴ (or exact in 128 bits on the encoder side), so chunks spanning `i64::MIN` to
//! `i64::MAX`, whose deltas overflow `i64`, round-trip.
//!
//! # Delta of delta ([`TsEncoding::DeltaOfDelta`])
//!
//! ```text
//! count ≤ 2: empty (the second timestamp is the header's max_ts)
//! count ≥ 3: uvarint  first delta (t₁ − t₀, wrapping u64)
//!            bits     count − 2 codes, MSB first, each the dod of one more timestamp:
//!              0                dod = 0
//!              10   + 7 bits    −64 ..= 63
//!              110  + 14 bits   −8192 ..= 8191        (±8 s)
//!              1110 + 24 bits   −2²³ ..= 2²³−1        (±2.3 h)
//!              1111 + 64 bits   anything (wrapping)
//! ```
//!
//! The widths are Prometheus' idea (ms resolution needs wider buckets than the paper's seconds)
//! with a narrow first bucket: what reaches this encoding is irregular or lightly jittered data,
//! since regular series go to the grid.
//!
//! # Grid ([`TsEncoding::Grid`])
//!
//! A series sampled every `interval` ms with jitter is `tᵢ = t₀ + kᵢ·interval + offsetᵢ`.
//! Under delta-of-delta, jitter j shows up as jᵢ − 2jᵢ₋₁ + jᵢ₋₂ (four times its spread); here it
//! is stored once, bit-packed at the width of its spread.
//!
//! ```text
//! uvarint  interval (1 ..= 2⁶²)
//! varint   lo: the smallest offset
//! u8       width: bits per packed offset (0 ..= 64)
//! uvarint  exception count, then per exception, by ascending sample index i ≥ 1:
//!            uvarint  i − (previous exception's i, or 0) − 1
//!            uvarint  gap: kᵢ − kᵢ₋₁ (a missed tick is 2; two samples in one cell 0)
//! packed   count − 1 values of `width` bits, LSB first: offsetᵢ − lo for i = 1 ..
//! ```
//!
//! Samples that are not exceptions advance one tick. The encoder rounds kᵢ to the nearest tick
//! (kᵢ = ⌊(tᵢ − t₀ + ⌊interval/2⌋) / interval⌋), so offsets span at most one interval. It
//! estimates the interval as the median delta refined over growing prefixes (a median off by
//! 1 ms would drift the offsets by 1 ms a tick), and keeps the grid only when it is smaller
//! than delta-of-delta.

use super::CodecError;
use super::TsEncoding;
use super::bits::{
    BitReader, BitWriter, Cursor, bit_width, pack, packed_len, put_uvarint, put_varint, unpack,
    uvarint_len, zigzag,
};

/// Largest grid interval; keeps offsets (at most interval/2) far from i64 overflow.
const MAX_INTERVAL: u64 = 1 << 62;

/// Delta-of-delta buckets after the `0` code: (prefix, prefix bits, payload bits).
const BUCKETS: [(u64, u32, u32); 4] = [
    (0b10, 2, 7),
    (0b110, 3, 14),
    (0b1110, 4, 24),
    (0b1111, 4, 64),
];

/// Bits of one delta-of-delta code (prefix and payload), by the bit width of the dod's zigzag
/// form: a dod fits a b-bit two's-complement field exactly when its zigzag form is below 2ᵇ.
const DOD_CODE_BITS: [u8; 65] = {
    let mut t = [0u8; 65];
    let mut w = 0;
    while w <= 64 {
        t[w] = if w == 0 { 1 } else { 0 };
        let mut b = 0;
        while t[w] == 0 {
            let (_, plen, bits) = BUCKETS[b];
            if w <= bits as usize {
                t[w] = (plen + bits) as u8;
            }
            b += 1;
        }
        w += 1;
    }
    t
};

/// Which bucket a non-zero dod goes to (index into [`BUCKETS`]).
#[inline]
fn bucket(dod: i64) -> usize {
    let w = bit_width(zigzag(dod));
    BUCKETS
        .iter()
        .position(|&(_, _, bits)| w <= bits)
        .unwrap_or(BUCKETS.len() - 1)
}

/// How the encoder will write the timestamps.
pub(crate) enum TsPlan {
    DeltaOfDelta,
    Grid(Grid),
}

impl TsPlan {
    pub(crate) fn encoding(&self) -> TsEncoding {
        match self {
            Self::DeltaOfDelta => TsEncoding::DeltaOfDelta,
            Self::Grid(_) => TsEncoding::Grid,
        }
    }
}

/// A grid fitted to a chunk's timestamps, ready to be written.
pub(crate) struct Grid {
    interval: u64,
    lo: i64,
    width: u32,
    /// offsetᵢ − lo for i ≥ 1.
    packed: Vec<u64>,
    /// (sample index, gap) where the gap is not 1.
    exceptions: Vec<(usize, u64)>,
    bytes: usize,
}

/// Picks the smaller encoding for `ts` (ascending, unique), or the forced one.
pub(crate) fn plan(ts: &[i64], forced: Option<TsEncoding>) -> TsPlan {
    if ts.len() < 2 || forced == Some(TsEncoding::DeltaOfDelta) {
        return TsPlan::DeltaOfDelta;
    }
    let grid = fit_grid(ts);
    // Delta-of-delta takes at least a bit a sample; a grid below that wins unmeasured.
    let dod_floor = (ts.len() - 2) / 8;
    if forced == Some(TsEncoding::Grid) || grid.bytes <= dod_floor || grid.bytes <= dod_len(ts) {
        TsPlan::Grid(grid)
    } else {
        TsPlan::DeltaOfDelta
    }
}

/// Bytes of the delta-of-delta section.
fn dod_len(ts: &[i64]) -> usize {
    if ts.len() <= 2 {
        return 0;
    }
    let first = ts[1].wrapping_sub(ts[0]) as u64;
    let mut prev = first;
    let mut bits = 0u64;
    for w in ts[1..].windows(2) {
        let delta = w[1].wrapping_sub(w[0]) as u64;
        let dod = delta.wrapping_sub(prev) as i64;
        bits += u64::from(DOD_CODE_BITS[bit_width(zigzag(dod)) as usize]);
        prev = delta;
    }
    uvarint_len(first) + bits.div_ceil(8) as usize
}

fn fit_grid(ts: &[i64]) -> Grid {
    grid_with(ts, estimate_interval(ts))
}

/// The grid interval: the median delta, refined over growing prefixes. A median that is off by
/// 1 ms drifts the offsets by 1 ms a tick (jitter makes a sampled median miss by a few ms), so
/// it is only the seed: over i ticks, (tᵢ − t₀) / i is exact to within the jitter spread / i.
/// Each prefix is short enough that the previous estimate still counts its ticks right.
fn estimate_interval(ts: &[i64]) -> u64 {
    let n = ts.len();
    let step = ((n - 1) / 256).max(1);
    let mut deltas: Vec<u64> = (1..n)
        .step_by(step)
        .map(|i| ts[i].wrapping_sub(ts[i - 1]) as u64)
        .collect();
    let mid = deltas.len() / 2;
    let mut p = u128::from((*deltas.select_nth_unstable(mid).1).clamp(1, MAX_INTERVAL));
    let mut end = (n - 1).min(32);
    loop {
        let d = u128::from(ts[end].wrapping_sub(ts[0]) as u64);
        let ticks = (d + p / 2) / p;
        if let Some(q) = (d + ticks / 2).checked_div(ticks) {
            p = q.clamp(1, u128::from(MAX_INTERVAL));
        }
        if end == n - 1 {
            // Clamped to MAX_INTERVAL above, so this fits.
            return p as u64;
        }
        end = (n - 1).min(end * 8);
    }
}

fn grid_with(ts: &[i64], p: u64) -> Grid {
    let half = p / 2;
    let mut offsets: Vec<u64> = Vec::with_capacity(ts.len() - 1);
    let mut exceptions = Vec::new();
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    // kᵢ = ⌊(tᵢ − t₀ + p/2) / p⌋ and offsetᵢ = tᵢ − t₀ − kᵢ·p ∈ [−p/2, p − p/2), computed
    // incrementally: (offsetᵢ₋₁ + p/2) + (tᵢ − tᵢ₋₁) = gapᵢ·p + (offsetᵢ + p/2).
    let mut off = 0i64;
    for (i, w) in ts.windows(2).enumerate() {
        // Exact: timestamps ascend, so the difference fits u64 even across the i64 range.
        let delta = w[1].wrapping_sub(w[0]) as u64;
        // In [0, p), and p ≤ 2⁶² keeps 2p from overflowing.
        let base = (off + half as i64) as u64;
        let (gap, rem) = match base.checked_add(delta) {
            Some(rel) if rel < 2 * p => {
                if rel >= p {
                    (1, rel - p)
                } else {
                    (0, rel)
                }
            }
            Some(rel) => (rel / p, rel % p),
            None => {
                let rel = u128::from(base) + u128::from(delta);
                let p = u128::from(p);
                // rel < 2⁶⁵ and p ≥ 2 here (p = 1 has base 0), so the quotient fits.
                ((rel / p) as u64, (rel % p) as u64)
            }
        };
        off = rem as i64 - half as i64;
        if gap != 1 {
            exceptions.push((i + 1, gap));
        }
        lo = lo.min(off);
        hi = hi.max(off);
        offsets.push(off as u64);
    }
    for o in &mut offsets {
        *o = (*o as i64).wrapping_sub(lo) as u64;
    }
    let width = bit_width(hi.wrapping_sub(lo) as u64);
    let mut bytes = uvarint_len(p) + uvarint_len(zigzag(lo)) + 1;
    bytes += uvarint_len(exceptions.len() as u64);
    let mut prev = 0;
    for &(i, gap) in &exceptions {
        bytes += uvarint_len((i - prev - 1) as u64) + uvarint_len(gap);
        prev = i;
    }
    bytes += packed_len(offsets.len(), width);
    Grid {
        interval: p,
        lo,
        width,
        packed: offsets,
        exceptions,
        bytes,
    }
}

/// Appends the timestamp section for `ts` as planned.
pub(crate) fn write(ts: &[i64], plan: &TsPlan, out: &mut Vec<u8>) {
    match plan {
        TsPlan::DeltaOfDelta => write_dod(ts, out),
        TsPlan::Grid(g) => {
            put_uvarint(out, g.interval);
            put_varint(out, g.lo);
            out.push(g.width as u8);
            put_uvarint(out, g.exceptions.len() as u64);
            let mut prev = 0;
            for &(i, gap) in &g.exceptions {
                put_uvarint(out, (i - prev - 1) as u64);
                put_uvarint(out, gap);
                prev = i;
            }
            pack(&g.packed, g.width, out);
        }
    }
}

fn write_dod(ts: &[i64], out: &mut Vec<u8>) {
    if ts.len() <= 2 {
        return;
    }
    let first = ts[1].wrapping_sub(ts[0]) as u64;
    put_uvarint(out, first);
    let mut w = BitWriter::with_vec(std::mem::take(out));
    let mut prev = first;
    for pair in ts[1..].windows(2) {
        let delta = pair[1].wrapping_sub(pair[0]) as u64;
        let dod = delta.wrapping_sub(prev) as i64;
        prev = delta;
        if dod == 0 {
            w.write_bit(false);
            continue;
        }
        let (prefix, plen, bits) = BUCKETS[bucket(dod)];
        w.write(prefix, plen);
        w.write(dod as u64, bits);
    }
    *out = w.finish();
}

/// Streams timestamps out of a section.
#[derive(Debug, Clone)]
pub(crate) enum TsDecoder<'a> {
    DeltaOfDelta(DodDecoder<'a>),
    Grid(GridDecoder<'a>),
}

#[derive(Debug, Clone)]
pub(crate) struct DodDecoder<'a> {
    bits: BitReader<'a>,
    section_len: usize,
    first_delta: u64,
    prev: i64,
    delta: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct GridDecoder<'a> {
    /// t₀ + lo, modulo 2⁶⁴: every timestamp is this + k·interval + packed offset.
    origin: u64,
    t0: i64,
    interval: u64,
    width: u32,
    exceptions: Cursor<'a>,
    exceptions_left: usize,
    /// Sample index of the next exception (`usize::MAX` when none is left) and its gap.
    next_at: usize,
    next_gap: u64,
    packed: &'a [u8],
    /// k·interval of the previous sample, modulo 2⁶⁴.
    base: u64,
}

impl<'a> TsDecoder<'a> {
    /// Validates the section's framing (everything but the bit codes) up front, so that filling
    /// never runs past it.
    pub(crate) fn new(
        encoding: TsEncoding,
        section: &'a [u8],
        count: usize,
        min_ts: i64,
        max_ts: i64,
    ) -> Result<Self, CodecError> {
        let mut c = Cursor::new(section);
        match encoding {
            TsEncoding::DeltaOfDelta => {
                let first_delta = if count >= 3 {
                    c.uvarint("timestamp first delta")?
                } else {
                    max_ts.wrapping_sub(min_ts) as u64
                };
                Ok(Self::DeltaOfDelta(DodDecoder {
                    bits: BitReader::new(c.remaining()),
                    section_len: c.remaining().len(),
                    first_delta,
                    prev: min_ts,
                    delta: 0,
                }))
            }
            TsEncoding::Grid => {
                let interval = c.uvarint("grid interval")?;
                if interval == 0 || interval > MAX_INTERVAL {
                    return Err(CodecError::corrupt("grid interval out of range"));
                }
                let lo = c.varint("grid offset base")?;
                let width = u32::from(c.u8("grid offset width")?);
                if width > 64 {
                    return Err(CodecError::corrupt("grid offset width above 64"));
                }
                let after_first = count.saturating_sub(1);
                let exceptions_left = c.bounded(after_first as u64, "grid exception count")?;
                let exceptions = c.clone();
                let mut last = 0usize;
                for _ in 0..exceptions_left {
                    let step = c.bounded(after_first as u64, "grid exception index")?;
                    last = last
                        .checked_add(step + 1)
                        .filter(|&i| i <= after_first)
                        .ok_or(CodecError::corrupt("grid exception index out of range"))?;
                    c.uvarint("grid exception gap")?;
                }
                let packed = c.remaining();
                if packed.len() != packed_len(after_first, width) {
                    return Err(CodecError::corrupt("grid offsets length mismatch"));
                }
                let mut grid = GridDecoder {
                    origin: (min_ts as u64).wrapping_add(lo as u64),
                    t0: min_ts,
                    interval,
                    width,
                    exceptions,
                    exceptions_left,
                    next_at: usize::MAX,
                    next_gap: 0,
                    packed,
                    base: 0,
                };
                grid.advance_exception(0)?;
                Ok(Self::Grid(grid))
            }
        }
    }

    /// Decodes the timestamps of samples `start .. start + out.len()`. Calls come in order and
    /// `scratch` holds at least `out.len()` values.
    pub(crate) fn fill(
        &mut self,
        start: usize,
        out: &mut [i64],
        scratch: &mut [u64],
    ) -> Result<(), CodecError> {
        match self {
            Self::DeltaOfDelta(d) => d.fill(start, out),
            Self::Grid(g) => g.fill(start, out, scratch),
        }
    }

    /// Checks, after the last sample, that the section held nothing more.
    pub(crate) fn finish(&self) -> Result<(), CodecError> {
        match self {
            Self::DeltaOfDelta(d) if d.bits.consumed_bytes() != d.section_len => Err(
                CodecError::corrupt("timestamp section longer than its codes"),
            ),
            // The grid's length was checked exactly in `new`.
            _ => Ok(()),
        }
    }
}

impl DodDecoder<'_> {
    fn fill(&mut self, start: usize, out: &mut [i64]) -> Result<(), CodecError> {
        for (j, o) in out.iter_mut().enumerate() {
            let i = start + j;
            if i > 0 {
                self.delta = if i == 1 {
                    self.first_delta
                } else {
                    self.delta.wrapping_add(read_dod(&mut self.bits)? as u64)
                };
                self.prev = self.prev.wrapping_add(self.delta as i64);
            }
            *o = self.prev;
        }
        Ok(())
    }
}

impl GridDecoder<'_> {
    /// Loads the exception after the one at sample `prev_at` (0 before the first).
    fn advance_exception(&mut self, prev_at: usize) -> Result<(), CodecError> {
        if self.exceptions_left == 0 {
            self.next_at = usize::MAX;
            return Ok(());
        }
        self.exceptions_left -= 1;
        // Indexes were bounded in `new`, so this cannot overflow.
        let step = self.exceptions.uvarint("grid exception index")? as usize;
        self.next_gap = self.exceptions.uvarint("grid exception gap")?;
        self.next_at = prev_at + step + 1;
        Ok(())
    }

    fn fill(
        &mut self,
        start: usize,
        out: &mut [i64],
        scratch: &mut [u64],
    ) -> Result<(), CodecError> {
        // Offsets are stored for samples 1.., so sample i's offset is packed value i − 1.
        let skip = usize::from(start == 0);
        if let (1, Some(first)) = (skip, out.first_mut()) {
            *first = self.t0;
        }
        let offsets = &mut scratch[..out.len()];
        if out.len() > skip {
            let from_bit = (start + skip - 1) * self.width as usize;
            unpack(self.packed, from_bit, self.width, &mut offsets[skip..]);
        }
        let end = start + out.len();
        let mut j = skip;
        while j < out.len() {
            // Samples up to the next exception advance one tick each: a tight loop.
            let stop = self.next_at.min(end) - start;
            let mut base = self.base;
            for (o, &off) in out[j..stop].iter_mut().zip(&offsets[j..stop]) {
                base = base.wrapping_add(self.interval);
                *o = self.origin.wrapping_add(base).wrapping_add(off) as i64;
            }
            j = stop;
            if j < out.len() {
                let gap = self.next_gap;
                self.advance_exception(start + j)?;
                base = base.wrapping_add(gap.wrapping_mul(self.interval));
                out[j] = self.origin.wrapping_add(base).wrapping_add(offsets[j]) as i64;
                j += 1;
            }
            self.base = base;
        }
        Ok(())
    }
}

#[inline]
fn read_dod(bits: &mut BitReader<'_>) -> Result<i64, CodecError> {
    const WHAT: &str = "timestamp delta of delta";
    let (peek, real) = bits.peek32();
    let ones = (!peek).leading_zeros().min(4);
    let (plen, width) = match ones {
        0 => {
            if real == 0 {
                return Err(CodecError::truncated(WHAT));
            }
            bits.skip_peeked(1);
            return Ok(0);
        }
        1 => (2, 7),
        2 => (3, 14),
        3 => (4, 24),
        _ => (4, 64),
    };
    if plen > real {
        return Err(CodecError::truncated(WHAT));
    }
    bits.skip_peeked(plen);
    let raw = bits.read(width, WHAT)?;
    // Sign-extend the two's-complement payload.
    let shift = 64 - width;
    Ok(((raw << shift) as i64) >> shift)
}

//! Byte and bit plumbing shared by every encoding: varints, a byte cursor, an MSB-first bit
//! stream (the Gorilla layout, also used by our delta-of-delta and XOR sections) and LSB-first
//! fixed-width bit packing (frame-of-reference blocks and grid offsets).
//!
//! Readers never index out of bounds and never allocate; running out of bytes is
//! [`CodecError::Truncated`].

use super::CodecError;

/// Most bytes a LEB128 varint of a `u64` takes.
pub(crate) const MAX_VARINT_BYTES: usize = 10;

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag(v));
}

/// Bytes `put_uvarint` writes for `v` (used to cost candidate encodings without writing them).
pub(crate) fn uvarint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Bits needed to hold `v` (0 for 0).
#[inline]
pub(crate) fn bit_width(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// A forward cursor over bytes; every read names what it was reading for the error message.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.pos).ok_or(CodecError::truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(CodecError::truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u64_le(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn uvarint(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT_BYTES {
            let b = self.u8(what)?;
            // The tenth byte may only carry the top bit of a u64.
            if i == MAX_VARINT_BYTES - 1 && b > 1 {
                return Err(CodecError::corrupt("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(CodecError::corrupt("varint overflows 64 bits"))
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<i64, CodecError> {
        self.uvarint(what).map(unzigzag)
    }

    /// A varint that must fit `usize` and be at most `max` (counts, lengths, indexes).
    pub(crate) fn bounded(&mut self, max: u64, what: &'static str) -> Result<usize, CodecError> {
        let v = self.uvarint(what)?;
        if v > max {
            return Err(CodecError::corrupt(what));
        }
        usize::try_from(v).map_err(|_| CodecError::corrupt(what))
    }
}

/// Writes bits most-significant first, as Prometheus' `bstream` does.
#[derive(Debug, Default)]
pub(crate) struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    /// Bits held in `acc`, counted from its most significant end; always < 64 between calls.
    filled: u32,
}

impl BitWriter {
    /// Continues writing after the bytes already in `out` (which must end on a byte boundary).
    pub(crate) fn with_vec(out: Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            filled: 0,
        }
    }

    /// Writes the low `nbits` (0..=64) bits of `v`.
    #[inline]
    pub(crate) fn write(&mut self, v: u64, nbits: u32) {
        if nbits == 0 {
            return;
        }
        let v = if nbits == 64 {
            v
        } else {
            v & ((1u64 << nbits) - 1)
        };
        let free = 64 - self.filled;
        if nbits < free {
            self.acc |= v << (free - nbits);
            self.filled += nbits;
        } else {
            let rest = nbits - free;
            // `free` is 1..=64 here, so the shift below is at most 63.
            self.acc |= if rest == 64 { 0 } else { v >> rest };
            self.out.extend_from_slice(&self.acc.to_be_bytes());
            self.acc = if rest == 0 { 0 } else { v << (64 - rest) };
            self.filled = rest;
        }
    }

    #[inline]
    pub(crate) fn write_bit(&mut self, bit: bool) {
        self.write(u64::from(bit), 1);
    }

    pub(crate) fn write_byte(&mut self, b: u8) {
        self.write(u64::from(b), 8);
    }

    /// Flushes the partial last byte (zero-filled) and returns the bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let bytes = self.filled.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_be_bytes()[..bytes]);
        self.out
    }
}

/// Reads bits most-significant first from a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte of `data` to load into `acc`.
    pos: usize,
    /// The next bits to read, left-aligned; bits below the valid ones are zero.
    acc: u64,
    valid: u32,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            acc: 0,
            valid: 0,
        }
    }

    /// Loads as many whole bytes as fit into the accumulator.
    #[inline]
    fn refill(&mut self) {
        if let Some(chunk) = self.data.get(self.pos..self.pos + 8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            let word = u64::from_be_bytes(a);
            let take = (64 - self.valid) / 8;
            if take == 0 {
                return;
            }
            let bits = take * 8;
            let fresh = if bits == 64 {
                word
            } else {
                (word >> (64 - bits)) << (64 - bits)
            };
            // `valid` < 64 because take > 0.
            self.acc |= fresh >> self.valid;
            self.valid += bits;
            self.pos += take as usize;
        } else {
            while self.valid <= 56 {
                let Some(&b) = self.data.get(self.pos) else {
                    break;
                };
                self.acc |= u64::from(b) << (56 - self.valid);
                self.valid += 8;
                self.pos += 1;
            }
        }
    }

    /// Reads `nbits` (1..=56) bits.
    #[inline]
    fn read_short(&mut self, nbits: u32, what: &'static str) -> Result<u64, CodecError> {
        if self.valid < nbits {
            self.refill();
            if self.valid < nbits {
                return Err(CodecError::truncated(what));
            }
        }
        let v = self.acc >> (64 - nbits);
        self.acc <<= nbits;
        self.valid -= nbits;
        Ok(v)
    }

    /// Reads `nbits` (0..=64) bits into the low bits of the result.
    #[inline]
    pub(crate) fn read(&mut self, nbits: u32, what: &'static str) -> Result<u64, CodecError> {
        match nbits {
            0 => Ok(0),
            1..=56 => self.read_short(nbits, what),
            _ => {
                let hi = self.read_short(nbits - 32, what)?;
                let lo = self.read_short(32, what)?;
                Ok((hi << 32) | lo)
            }
        }
    }

    #[inline]
    pub(crate) fn read_bit(&mut self, what: &'static str) -> Result<bool, CodecError> {
        self.read_short(1, what).map(|b| b == 1)
    }

    /// Up to the next 32 bits, left-aligned in the result, without consuming them; bits past the
    /// end read as zero. Returns how many of them are real.
    #[inline]
    pub(crate) fn peek32(&mut self) -> (u32, u32) {
        if self.valid < 32 {
            self.refill();
        }
        ((self.acc >> 32) as u32, self.valid.min(32))
    }

    /// Consumes `nbits` already seen through [`Self::peek32`] (so `nbits` ≤ the real bits).
    #[inline]
    pub(crate) fn skip_peeked(&mut self, nbits: u32) {
        debug_assert!(nbits <= self.valid && nbits <= 32);
        self.acc <<= nbits;
        self.valid -= nbits;
    }

    pub(crate) fn read_byte(&mut self, what: &'static str) -> Result<u8, CodecError> {
        self.read_short(8, what).map(|b| b as u8)
    }

    /// Bytes consumed so far, counting a partly read byte as consumed.
    pub(crate) fn consumed_bytes(&self) -> usize {
        self.pos - (self.valid / 8) as usize
    }
}

/// Appends `values`, each cut to its low `width` bits, least significant first.
pub(crate) fn pack(values: &[u64], width: u32, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    out.reserve(packed_len(values.len(), width));
    let mut acc = 0u64;
    let mut filled = 0u32;
    for &v in values {
        let v = v & mask;
        acc |= v << filled;
        filled += width;
        if filled >= 64 {
            out.extend_from_slice(&acc.to_le_bytes());
            filled -= 64;
            // The bits of `v` that did not fit; none when it ended exactly on the word.
            acc = if filled == 0 {
                0
            } else {
                v >> (width - filled)
            };
        }
    }
    let tail = filled.div_ceil(8) as usize;
    out.extend_from_slice(&acc.to_le_bytes()[..tail]);
}

/// Bytes `pack` writes for `n` values of `width` bits.
pub(crate) fn packed_len(n: usize, width: u32) -> usize {
    (n * width as usize).div_ceil(8)
}

#[inline]
fn load_le(src: &[u8], byte: usize) -> u64 {
    if let Some(chunk) = src.get(byte..byte + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        u64::from_le_bytes(a)
    } else {
        let mut a = [0u8; 8];
        let tail = src.get(byte..).unwrap_or_default();
        a[..tail.len()].copy_from_slice(tail);
        u64::from_le_bytes(a)
    }
}

/// Reads `out.len()` values of `width` bits written by [`pack`], starting `start_bit` bits into
/// `src`. The caller has checked that `src` holds them all; bits past the end read as zero.
#[inline]
pub(crate) fn unpack(src: &[u8], start_bit: usize, width: u32, out: &mut [u64]) {
    if width == 0 {
        out.fill(0);
        return;
    }
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    let w = width as usize;
    let last_byte = (start_bit + out.len() * w) / 8;
    if width <= 56 && last_byte + 8 <= src.len() {
        // Every value lies within one 8-byte load that stays inside `src`.
        let mut bit = start_bit;
        for o in out.iter_mut() {
            let byte = bit / 8;
            let mut a = [0u8; 8];
            a.copy_from_slice(&src[byte..byte + 8]);
            *o = (u64::from_le_bytes(a) >> (bit % 8)) & mask;
            bit += w;
        }
        return;
    }
    let mut bit = start_bit;
    for o in out.iter_mut() {
        let byte = bit / 8;
        let shift = (bit % 8) as u32;
        let mut v = load_le(src, byte) >> shift;
        // A value of more than 56 bits may straddle a ninth byte.
        if shift + width > 64 {
            v |= u64::from(src.get(byte + 8).copied().unwrap_or(0)) << (64 - shift);
        }
        *o = v & mask;
        bit += w;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_extremes() {
        for v in [0, 1, 127, 128, 300, u64::MAX / 3, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(out.len(), uvarint_len(v), "{v}");
            assert_eq!(Cursor::new(&out).uvarint("t"), Ok(v));
        }
        for v in [0, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        // Eleven bytes, or a tenth byte with more than one bit, cannot be a u64.
        let too_long = [0xffu8; 11];
        assert!(Cursor::new(&too_long).uvarint("t").is_err());
        let mut overflow = vec![0xffu8; 9];
        overflow.push(0x02);
        assert!(Cursor::new(&overflow).uvarint("t").is_err());
    }

    #[test]
    fn bit_stream_round_trips_every_width() {
        let mut w = BitWriter::default();
        let mut expect = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..2000u32 {
            let n = i % 65;
            x = x.rotate_left(7).wrapping_mul(0x2545_f491_4f6c_dd1d);
            let v = if n == 64 { x } else { x & ((1u64 << n) - 1) };
            w.write(v, n);
            expect.push((v, n));
        }
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for (v, n) in expect {
            assert_eq!(r.read(n, "t"), Ok(v), "width {n}");
        }
        assert_eq!(r.consumed_bytes(), bytes.len());
    }

    #[test]
    fn packing_round_trips_every_width() {
        for width in 0..=64u32 {
            let mask = if width == 64 {
                u64::MAX
            } else {
                (1u64 << width) - 1
            };
            let values: Vec<u64> = (0..131u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & mask)
                .collect();
            let mut out = vec![0xaa];
            pack(&values, width, &mut out);
            assert_eq!(out.len(), 1 + packed_len(values.len(), width));
            let mut back = vec![0; values.len()];
            unpack(&out, 8, width, &mut back);
            assert_eq!(back, values, "width {width}");
        }
    }
}

//! Integer-stream value coding. Each value becomes an integer "mantissa", stored raw, as
//! deltas or as deltas of deltas, in blocks of [`BLOCK`], each bit-packed or Rice-coded.
//! Two ways to get the integers:
//!
//! - **decimal** (ids 2–4): values that are exact multiples of 10⁻ᵈ, scaled by 10ᵈ;
//! - **float bits** (ids 6–8): any value's IEEE-754 bits, mapped so that integer order is float
//!   order (negative values have their 63 low bits flipped). Neighbouring full-precision values
//!   are near each other as integers, so this beats XOR when they differ in their high
//!   mantissa bits (noise, counters of float sums) and decodes as fast as decimal.
//!
//! A value v is decimal at exponent d when `m = round(v·10ᵈ)` satisfies `m as f64 / 10ᵈ == v`
//! bit for bit; the decoder computes exactly that quotient, so whatever the encoder verified is
//! what comes back. 10ᵈ is exact in f64 for every d ≤ [`MAX_EXPONENT`], and IEEE division is
//! correctly rounded, so the check is deterministic across platforms. NaNs (the stale marker
//! too), ±Inf, −0.0, subnormals and magnitudes beyond i64 never pass it; they become
//! exceptions: kept verbatim, at their index, while the mantissa stream repeats the previous
//! mantissa there (so a stale marker costs 9–10 bytes and nothing else).
//!
//! ```text
//! u8       d: decimal exponent (0 ..= 18)                  (decimal only)
//! uvarint  exception count, then per exception by ascending index:    (decimal only)
//!            uvarint  index − (previous exception's index + 1, or 0)
//!            u64 LE   the value's bits
//! varint   m₀                      (delta and delta-of-delta only)
//! varint   m₁ − m₀                 (delta-of-delta only, when count ≥ 2)
//! blocks   one per BLOCK samples (the last may be short), over the transformed stream, each
//!          either bit-packed (kind < 0x80):
//!            u8       width w (0 ..= 64)
//!            varint   min: the block's smallest transformed value
//!            packed   the block's values − min, w bits each, LSB first
//!          or Rice-coded (kind ≥ 0x80):
//!            u8       0x80 | k (k ≤ 40)
//!            varint   center c
//!            bits     per value, MSB first: zz = zigzag(value − c); q = zz >> k zeros (≤ 48),
//!                     a one, then the low k bits of zz; zero-padded to a byte
//! ```
//!
//! The encoder costs both per block and keeps the smaller: packing is fastest and optimal for
//! uniform spreads (random walks with uniform steps), Rice wins on peaked ones (Gaussian noise,
//! rounded walks whose deltas are mostly 0 and ±1, where one ±3 would set the packed width).
//!
//! Transformed stream: raw mᵢ; delta mᵢ − mᵢ₋₁; delta-of-delta (mᵢ − mᵢ₋₁) − (mᵢ₋₁ − mᵢ₋₂),
//! all wrapping. Slots whose value is in the prefix (index 0, and 1 for delta-of-delta) hold
//! the block's base (min or center) and are ignored. Per-block widths keep a counter reset or a refuel from widening more
//! than its own block.

use super::bits::{
    BitReader, BitWriter, Cursor, bit_width, pack, packed_len, put_uvarint, put_varint, unpack,
    unzigzag, uvarint_len, zigzag,
};
use super::{BLOCK, CodecError};

/// Largest decimal exponent tried (10¹⁸ is still exact in f64).
pub(crate) const MAX_EXPONENT: usize = 18;

pub(crate) const POW10: [f64; MAX_EXPONENT + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18,
];

/// The mantissa of `v` at exponent `d`, if `v` is exactly decimal there.
#[inline]
pub(crate) fn mantissa_at(v: f64, d: usize) -> Option<i64> {
    let scale = POW10[d];
    let scaled = v * scale;
    // 2⁶³ ≈ 9.22e18: stay clear of the saturating cast. NaN is caught here too.
    if scaled.abs().partial_cmp(&9.2e18) != Some(std::cmp::Ordering::Less) {
        return None;
    }
    // Round half away from zero without `f64::round` (a libm call on baseline x86-64); the
    // check below catches any case where this picks the wrong neighbour.
    let m = if scaled >= 0.0 {
        (scaled + 0.5) as i64
    } else {
        (scaled - 0.5) as i64
    };
    ((m as f64 / scale).to_bits() == v.to_bits()).then_some(m)
}

/// The smallest exponent at which `v` is decimal.
pub(crate) fn min_exponent(v: f64) -> Option<usize> {
    (0..=MAX_EXPONENT).find(|&d| mantissa_at(v, d).is_some())
}

/// How the mantissas are turned into the packed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    Raw,
    Delta,
    DeltaOfDelta,
}

impl Transform {
    pub(crate) const ALL: [Self; 3] = [Self::Raw, Self::Delta, Self::DeltaOfDelta];

    /// Leading samples carried in the section prefix instead of the blocks.
    fn prefix(self) -> usize {
        match self {
            Self::Raw => 0,
            Self::Delta => 1,
            Self::DeltaOfDelta => 2,
        }
    }
}

/// Where a stream's integers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scale {
    /// value = mantissa / 10ᵈ.
    Decimal(u8),
    /// value = the float whose order-mapped bits are the mantissa.
    FloatBits,
}

/// Maps float bits to an integer with the same order (and back: it is its own inverse).
#[inline]
pub(crate) fn order_bits(bits: u64) -> i64 {
    let b = bits as i64;
    // For negative floats flip the magnitude bits, so that more negative is smaller.
    b ^ (((b >> 63) as u64) >> 1) as i64
}

/// A chunk's values as integers, plus (decimal only) the values that are not decimal.
pub(crate) struct Mantissas {
    scale: Scale,
    m: Vec<i64>,
    /// (index, bits) of the values kept verbatim.
    exceptions: Vec<(usize, u64)>,
}

impl Mantissas {
    /// Every value's order-mapped bits.
    pub(crate) fn float_bits(values: &[f64]) -> Self {
        Self {
            scale: Scale::FloatBits,
            m: values.iter().map(|v| order_bits(v.to_bits())).collect(),
            exceptions: Vec::new(),
        }
    }

    /// Scales `values` at the smallest exponent that suits them. `None` when more than
    /// `max_exceptions` values are not decimal at any exponent, or, with `max_exceptions`
    /// below the number of values, as soon as a prefix shows the data is full precision.
    pub(crate) fn decimal(values: &[f64], max_exceptions: usize) -> Option<Self> {
        let give_up_early = max_exceptions < values.len();
        let mut d = 0usize;
        let mut m = Vec::with_capacity(values.len());
        let mut exceptions = Vec::new();
        let mut searched_in_vain = 0usize;
        // Mantissas before this index were computed at a smaller exponent.
        let mut settled_from = 0;
        for (i, &v) in values.iter().enumerate() {
            if let Some(x) = mantissa_at(v, d) {
                m.push(x);
                continue;
            }
            // NaN, ±Inf, −0.0 (+0.0 passed above), subnormals and magnitudes past i64 are not
            // decimal at any exponent: no need to try them all.
            let a = v.abs();
            let hopeless = !(f64::MIN_POSITIVE..9.2e18).contains(&a);
            let found = if hopeless {
                None
            } else {
                (d + 1..=MAX_EXPONENT).find_map(|e| mantissa_at(v, e).map(|x| (e, x)))
            };
            match found {
                Some((e, x)) => {
                    d = e;
                    settled_from = i;
                    m.push(x);
                }
                None => {
                    exceptions.push((i, v.to_bits()));
                    // Full-precision data fails the whole search value after value; stop
                    // paying for it after a few (isolated stale markers are not counted).
                    searched_in_vain += usize::from(!hopeless);
                    if exceptions.len() > max_exceptions
                        || (give_up_early && searched_in_vain > i / 8 + 2)
                    {
                        return None;
                    }
                    m.push(0);
                }
            }
        }
        // Rescale what was computed before the exponent last grew. A value exact at a smaller
        // exponent is nearly always exact at a larger one, but the check decides.
        let mut late = Vec::new();
        let mut ex = exceptions.iter().peekable();
        for (i, x) in m.iter_mut().enumerate().take(settled_from) {
            if ex.peek().is_some_and(|&&(at, _)| at == i) {
                ex.next();
                continue;
            }
            match mantissa_at(values[i], d) {
                Some(y) => *x = y,
                None => late.push((i, values[i].to_bits())),
            }
        }
        if !late.is_empty() {
            exceptions.extend(late);
            exceptions.sort_unstable_by_key(|&(i, _)| i);
            if exceptions.len() > max_exceptions {
                return None;
            }
        }
        // Exceptions repeat the previous mantissa (the first regular one when leading), so
        // they add nothing to the packed stream.
        let mut ex = exceptions.iter().map(|&(at, _)| at).peekable();
        let first_regular = (0..m.len())
            .find(|&i| exceptions.binary_search_by_key(&i, |&(at, _)| at).is_err())
            .map_or(0, |i| m[i]);
        let mut prev = first_regular;
        for (i, x) in m.iter_mut().enumerate() {
            if ex.peek() == Some(&i) {
                ex.next();
                *x = prev;
            }
            prev = *x;
        }
        Some(Self {
            scale: Scale::Decimal(d as u8),
            m,
            exceptions,
        })
    }

    /// Bytes the section takes with `transform`: exact, or, with `stride` > 1, estimated from
    /// every `stride`-th block.
    pub(crate) fn cost(&self, transform: Transform, stride: usize) -> usize {
        let mut bytes = 0;
        let mut buf = [0i64; BLOCK];
        let starts = (0..self.m.len()).step_by(BLOCK);
        let blocks = starts.len();
        let mut sampled = 0;
        for start in starts.step_by(stride) {
            let (coding, len) = self.block(transform, start, &mut buf);
            bytes += coding.bytes(len);
            sampled += 1;
        }
        self.prefix_len(transform) + bytes * blocks / sampled.max(1)
    }

    /// The cheapest transform and its (estimated) cost. Long chunks are judged on a quarter
    /// of their blocks: the three candidates usually differ by far more than the sampling
    /// error, and costing is most of the encoder's time.
    pub(crate) fn best(&self) -> (Transform, usize) {
        let stride = if self.m.len() >= 16 * BLOCK { 4 } else { 1 };
        let mut best = (Transform::Raw, usize::MAX);
        for t in Transform::ALL {
            let bytes = self.cost(t, stride);
            if bytes < best.1 {
                best = (t, bytes);
            }
        }
        best
    }

    pub(crate) fn scale(&self) -> Scale {
        self.scale
    }

    fn prefix_len(&self, transform: Transform) -> usize {
        let mut bytes = 0;
        if let Scale::Decimal(_) = self.scale {
            bytes += 1 + uvarint_len(self.exceptions.len() as u64);
            let mut prev = 0;
            for &(i, _) in &self.exceptions {
                bytes += uvarint_len((i - prev) as u64) + 8;
                prev = i + 1;
            }
        }
        let m = &self.m;
        if transform.prefix() >= 1 {
            bytes += uvarint_len(zigzag(m[0]));
        }
        if transform.prefix() >= 2 && m.len() >= 2 {
            bytes += uvarint_len(zigzag(m[1].wrapping_sub(m[0])));
        }
        bytes
    }

    /// Fills `buf` with block `start`'s transformed values and picks how to store them;
    /// returns that and the block's length. Prefix slots are set to the coding's base.
    fn block(
        &self,
        transform: Transform,
        start: usize,
        buf: &mut [i64; BLOCK],
    ) -> (BlockCoding, usize) {
        let m = &self.m;
        let end = (start + BLOCK).min(m.len());
        let len = end - start;
        let skip = transform.prefix().saturating_sub(start).min(len);
        let from = start + skip;
        let out = &mut buf[skip..len];
        // Written as zipped slices so that the loops carry no bounds checks.
        if !out.is_empty() {
            match transform {
                Transform::Raw => out.copy_from_slice(&m[from..end]),
                Transform::Delta => {
                    for ((o, &a), &b) in out.iter_mut().zip(&m[from..end]).zip(&m[from - 1..]) {
                        *o = a.wrapping_sub(b);
                    }
                }
                Transform::DeltaOfDelta => {
                    let pairs = m[from..end].iter().zip(&m[from - 1..]).zip(&m[from - 2..]);
                    for (o, ((&a, &b), &c)) in out.iter_mut().zip(pairs) {
                        *o = a.wrapping_sub(b).wrapping_sub(b.wrapping_sub(c));
                    }
                }
            }
        }
        let coding = BlockCoding::choose(out, skip);
        buf[..skip].fill(coding.base());
        (coding, len)
    }

    /// Appends the section.
    pub(crate) fn write(&self, transform: Transform, out: &mut Vec<u8>) {
        if let Scale::Decimal(d) = self.scale {
            out.push(d);
            put_uvarint(out, self.exceptions.len() as u64);
            let mut prev = 0;
            for &(i, bits) in &self.exceptions {
                put_uvarint(out, (i - prev) as u64);
                out.extend_from_slice(&bits.to_le_bytes());
                prev = i + 1;
            }
        }
        let m = &self.m;
        if transform.prefix() >= 1 {
            put_varint(out, m[0]);
        }
        if transform.prefix() >= 2 && m.len() >= 2 {
            put_varint(out, m[1].wrapping_sub(m[0]));
        }
        let mut buf = [0i64; BLOCK];
        let mut packed = [0u64; BLOCK];
        for start in (0..m.len()).step_by(BLOCK) {
            let (coding, len) = self.block(transform, start, &mut buf);
            match coding {
                BlockCoding::Packed { min, width } => {
                    out.push(width as u8);
                    put_varint(out, min);
                    for (p, &t) in packed.iter_mut().zip(&buf[..len]) {
                        *p = t.wrapping_sub(min) as u64;
                    }
                    pack(&packed[..len], width, out);
                }
                BlockCoding::Rice { center, k, .. } => {
                    out.push(RICE | k as u8);
                    put_varint(out, center);
                    let mut w = BitWriter::with_vec(std::mem::take(out));
                    for &t in &buf[..len] {
                        let zz = zigzag(t.wrapping_sub(center));
                        // q zeros, a one, the low k bits: q + 1 + k ≤ 89 bits, one write when
                        // they fit a word.
                        let q = (zz >> k) as u32;
                        let low = zz & ((1u64 << k) - 1);
                        if q + 1 + k <= 64 {
                            w.write((1u64 << k) | low, q + 1 + k);
                        } else {
                            w.write(1, q + 1);
                            w.write(low, k);
                        }
                    }
                    *out = w.finish();
                }
            }
        }
    }
}

/// Block kind byte: below this, a bit width (0 ..= 64); from it, Rice coding with k = the low
/// bits.
const RICE: u8 = 0x80;
/// Longest unary quotient in a Rice block; blocks that would need more are bit-packed.
const MAX_UNARY: u64 = 48;
/// Largest Rice parameter.
const MAX_RICE_K: u32 = 40;

/// How one block of transformed values is stored.
#[derive(Debug, Clone, Copy)]
enum BlockCoding {
    /// Frame of reference: every value − min in `width` bits.
    Packed { min: i64, width: u32 },
    /// Golomb–Rice codes of zigzag(value − center): peaked distributions (walks of rounded
    /// values, noise) cost close to their entropy instead of the width of their extremes.
    Rice { center: i64, k: u32, bits: u64 },
}

impl BlockCoding {
    /// The cheaper coding for `values` (the block minus its `skip` prefix slots, which are
    /// stored as the base).
    fn choose(values: &[i64], skip: usize) -> Self {
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for &t in values {
            lo = lo.min(t);
            hi = hi.max(t);
        }
        if values.is_empty() {
            return Self::Packed { min: 0, width: 0 };
        }
        let width = bit_width(hi.wrapping_sub(lo) as u64);
        let packed = Self::Packed { min: lo, width };
        // Rice only pays where a few bits are spent on a peaked spread.
        if !(2..=24).contains(&width) {
            return packed;
        }
        // Center on the midrange, and try the few k that can beat packing (k ≥ width is
        // never better); one pass sums the quotients of all of them.
        let center = lo + (hi - lo) / 2;
        let k_min = width.saturating_sub(4);
        let mut sums = [0u64; 4];
        let mut max_zz = 0;
        for &t in values {
            let zz = zigzag(t.wrapping_sub(center));
            max_zz = max_zz.max(zz);
            for (j, sum) in sums.iter_mut().enumerate() {
                *sum += zz >> (k_min + j as u32);
            }
        }
        let codes = (values.len() + skip) as u64;
        let mut best: Option<Self> = None;
        for (j, &sum) in sums.iter().enumerate() {
            let k = k_min + j as u32;
            if k >= width || k > MAX_RICE_K || max_zz >> k > MAX_UNARY {
                continue;
            }
            let bits = sum + codes * u64::from(1 + k);
            if best.is_none_or(|b| bits < b.payload_bits()) {
                best = Some(Self::Rice { center, k, bits });
            }
        }
        match best {
            Some(rice) if rice.payload_bits() < u64::from(width) * (values.len() + skip) as u64 => {
                rice
            }
            _ => packed,
        }
    }

    fn payload_bits(self) -> u64 {
        match self {
            Self::Packed { .. } => u64::MAX,
            Self::Rice { bits, .. } => bits,
        }
    }

    /// The value prefix slots hold.
    fn base(self) -> i64 {
        match self {
            Self::Packed { min, .. } => min,
            Self::Rice { center, .. } => center,
        }
    }

    /// Bytes the block takes, kind byte and base included.
    fn bytes(self, len: usize) -> usize {
        1 + uvarint_len(zigzag(self.base()))
            + match self {
                Self::Packed { width, .. } => packed_len(len, width),
                Self::Rice { bits, .. } => bits.div_ceil(8) as usize,
            }
    }
}

/// Streams values out of an integer-stream section.
#[derive(Debug, Clone)]
pub(crate) struct IntsDecoder<'a> {
    transform: Transform,
    /// 10ᵈ, or `None` for float bits.
    scale: Option<f64>,
    count: usize,
    exceptions: Cursor<'a>,
    exceptions_left: usize,
    /// Index of the next exception (`usize::MAX` when none is left).
    next_at: usize,
    blocks: Cursor<'a>,
    m0: i64,
    d1: i64,
    prev: i64,
    delta: i64,
}

impl<'a> IntsDecoder<'a> {
    pub(crate) fn new(
        transform: Transform,
        float_bits: bool,
        section: &'a [u8],
        count: usize,
    ) -> Result<Self, CodecError> {
        let mut c = Cursor::new(section);
        let mut scale = None;
        let mut exceptions_left = 0;
        if !float_bits {
            let d = usize::from(c.u8("decimal exponent")?);
            scale = Some(
                *POW10
                    .get(d)
                    .ok_or(CodecError::corrupt("decimal exponent above 18"))?,
            );
            exceptions_left = c.bounded(count as u64, "decimal exception count")?;
        }
        let exceptions = c.clone();
        let mut next = 0usize;
        for _ in 0..exceptions_left {
            let step = c.bounded(count as u64, "decimal exception index")?;
            next = next
                .checked_add(step)
                .filter(|&i| i < count)
                .ok_or(CodecError::corrupt("decimal exception index out of range"))?
                + 1;
            c.u64_le("decimal exception value")?;
        }
        let m0 = if transform.prefix() >= 1 {
            c.varint("first mantissa")?
        } else {
            0
        };
        let d1 = if transform.prefix() >= 2 && count >= 2 {
            c.varint("first mantissa delta")?
        } else {
            0
        };
        let mut dec = Self {
            transform,
            scale,
            count,
            exceptions,
            exceptions_left,
            next_at: usize::MAX,
            blocks: c,
            m0,
            d1,
            prev: 0,
            delta: 0,
        };
        dec.advance_exception(0)?;
        Ok(dec)
    }

    fn advance_exception(&mut self, from: usize) -> Result<(), CodecError> {
        if self.exceptions_left == 0 {
            self.next_at = usize::MAX;
            return Ok(());
        }
        self.exceptions_left -= 1;
        // Bounded in `new`.
        self.next_at = from + self.exceptions.uvarint("decimal exception index")? as usize;
        Ok(())
    }

    /// Decodes samples `start .. start + out.len()`: one block, since the iterator's batches
    /// are [`BLOCK`]-aligned.
    pub(crate) fn fill(
        &mut self,
        start: usize,
        out: &mut [f64],
        scratch: &mut [u64],
    ) -> Result<(), CodecError> {
        const WHAT: &str = "value block";
        let len = out.len();
        debug_assert!(start.is_multiple_of(BLOCK) && len <= BLOCK && start + len <= self.count);
        let kind = self.blocks.u8(WHAT)?;
        let min = self.blocks.varint(WHAT)?;
        let data = self.blocks.remaining();
        let raw = &mut scratch[..len];
        if kind < RICE {
            let width = u32::from(kind);
            if width > 64 {
                return Err(CodecError::corrupt("value block width above 64"));
            }
            let bytes = packed_len(len, width);
            if data.len() < bytes {
                return Err(CodecError::truncated(WHAT));
            }
            unpack(data, 0, width, raw);
            self.blocks.bytes(bytes, WHAT)?;
        } else {
            let k = u32::from(kind - RICE);
            if k > MAX_RICE_K {
                return Err(CodecError::corrupt("rice parameter too large"));
            }
            let mut bits = BitReader::new(data);
            for r in raw.iter_mut() {
                let q = read_unary(&mut bits)?;
                let zz = (q << k) | bits.read(k, WHAT)?;
                *r = unzigzag(zz) as u64;
            }
            self.blocks.bytes(bits.consumed_bytes(), WHAT)?;
        }

        // Rebuild the mantissas in place.
        let skip = self.transform.prefix().saturating_sub(start).min(len);
        for (j, r) in raw.iter_mut().enumerate().take(skip) {
            let m = if start + j == 0 {
                self.m0
            } else {
                self.delta = self.d1;
                self.m0.wrapping_add(self.d1)
            };
            self.prev = m;
            *r = m as u64;
        }
        let rest = &mut raw[skip..];
        match self.transform {
            Transform::Raw => {
                for r in rest.iter_mut() {
                    *r = min.wrapping_add(*r as i64) as u64;
                }
            }
            Transform::Delta => {
                let mut m = self.prev;
                for r in rest.iter_mut() {
                    m = m.wrapping_add(min.wrapping_add(*r as i64));
                    *r = m as u64;
                }
                self.prev = m;
            }
            Transform::DeltaOfDelta => {
                let (mut m, mut delta) = (self.prev, self.delta);
                for r in rest.iter_mut() {
                    delta = delta.wrapping_add(min.wrapping_add(*r as i64));
                    m = m.wrapping_add(delta);
                    *r = m as u64;
                }
                self.prev = m;
                self.delta = delta;
            }
        }
        match self.scale {
            Some(scale) => {
                for (o, &r) in out.iter_mut().zip(raw.iter()) {
                    *o = r as i64 as f64 / scale;
                }
            }
            None => {
                for (o, &r) in out.iter_mut().zip(raw.iter()) {
                    *o = f64::from_bits(order_bits(r) as u64);
                }
            }
        }
        while self.next_at < start + len {
            let at = self.next_at;
            out[at - start] = f64::from_bits(self.exceptions.u64_le("decimal exception value")?);
            self.advance_exception(at + 1)?;
        }
        Ok(())
    }

    /// Bytes left after the last block (must be zero padding).
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.blocks.remaining()
    }
}

/// Reads a unary quotient: zeros up to a one, at most [`MAX_UNARY`] of them.
#[inline]
fn read_unary(bits: &mut BitReader<'_>) -> Result<u64, CodecError> {
    const WHAT: &str = "rice code";
    let (peek, real) = bits.peek32();
    let zeros = peek.leading_zeros();
    if zeros < real {
        bits.skip_peeked(zeros + 1);
        return Ok(u64::from(zeros));
    }
    let mut q = 0;
    while !bits.read_bit(WHAT)? {
        q += 1;
        if q > MAX_UNARY {
            return Err(CodecError::corrupt("rice quotient too long"));
        }
    }
    Ok(q)
}

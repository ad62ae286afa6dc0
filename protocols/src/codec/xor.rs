//! Gorilla XOR value coding, bit-for-bit the scheme of Prometheus' `xor.go`, shared by the
//! baseline ([`super::gorilla`]) and our chunk's full-precision fallback
//! ([`super::ValueEncoding::Xor`]).
//!
//! Each value after the first is XORed with its predecessor: `0` when equal; `10` + the
//! meaningful bits when they fit the previous leading/trailing-zero window; `11` + 5 bits of
//! leading zeros (clamped to 31) + 6 bits of meaningful-bit count (64 written as 0) + the bits.

use super::CodecError;
use super::bits::{BitReader, BitWriter};

/// Encoder state: the previous value's bits and the current leading/trailing-zero window.
pub(crate) struct XorEncoder {
    prev: u64,
    /// `None` until the first full window has been written.
    window: Option<(u32, u32)>,
}

impl XorEncoder {
    /// Writes the first value verbatim.
    pub(crate) fn first(w: &mut BitWriter, v: u64) -> Self {
        w.write(v, 64);
        Self {
            prev: v,
            window: None,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, w: &mut BitWriter, v: u64) {
        let x = v ^ self.prev;
        self.prev = v;
        if x == 0 {
            w.write_bit(false);
            return;
        }
        // Five bits hold at most 31 leading zeros; more are written as part of the value.
        let leading = x.leading_zeros().min(31);
        let trailing = x.trailing_zeros();
        match self.window {
            Some((l, t)) if leading >= l && trailing >= t => {
                w.write(0b10, 2);
                w.write(x >> t, 64 - l - t);
            }
            _ => {
                self.window = Some((leading, trailing));
                let sig = 64 - leading - trailing;
                w.write(0b11, 2);
                w.write(u64::from(leading), 5);
                // 64 meaningful bits do not fit 6 bits; 0 stands for it (x != 0, so 0 is free).
                w.write(u64::from(sig & 63), 6);
                w.write(x >> trailing, sig);
            }
        }
    }
}

/// Decoder state mirroring [`XorEncoder`].
#[derive(Debug, Clone)]
pub(crate) struct XorDecoder {
    prev: u64,
    leading: u32,
    trailing: u32,
}

impl XorDecoder {
    pub(crate) fn first(r: &mut BitReader<'_>) -> Result<(Self, u64), CodecError> {
        let v = r.read(64, "xor first value")?;
        Ok((
            Self {
                prev: v,
                leading: 0,
                trailing: 0,
            },
            v,
        ))
    }

    #[inline]
    pub(crate) fn next(&mut self, r: &mut BitReader<'_>) -> Result<u64, CodecError> {
        const WHAT: &str = "xor value";
        if !r.read_bit(WHAT)? {
            return Ok(self.prev);
        }
        if r.read_bit(WHAT)? {
            let leading = r.read(5, WHAT)? as u32;
            let sig = match r.read(6, WHAT)? as u32 {
                0 => 64,
                s => s,
            };
            // A hostile stream can claim more bits than a u64 has.
            self.trailing = 64u32
                .checked_sub(leading + sig)
                .ok_or(CodecError::corrupt("xor window wider than 64 bits"))?;
            self.leading = leading;
        }
        let sig = 64 - self.leading - self.trailing;
        let bits = r.read(sig, WHAT)?;
        // sig ≥ 1 after a window was read; a stream that reuses the initial (0, 0) window reads
        // 64 bits and shifts by 0, which is well defined.
        self.prev ^= bits << self.trailing;
        Ok(self.prev)
    }
}

//! The comparison baseline: a chunk laid out exactly as Prometheus' XOR chunk
//! (`tsdb/chunkenc/xor.go`), so that "× Gorilla" figures mean "× what Prometheus stores".
//!
//! ```text
//! u16 BE   sample count
//! bits     (MSB first, as Prometheus' bstream)
//!   varint     first timestamp (zigzag LEB128, Go's binary.PutVarint)
//!   64 bits    first value
//!   uvarint    second timestamp − first (wrapping u64), then the XOR of the second value
//!   per further sample: delta-of-delta of the timestamp, then its XOR value code
//!     0                 dod = 0
//!     10   + 14 bits    dod in [-8191, 8192]
//!     110  + 17 bits    dod in [-65535, 65536]
//!     1110 + 20 bits    dod in [-524287, 524288]
//!     1111 + 64 bits    any other dod (wrapping)
//! ```
//!
//! The bucket ranges are Prometheus' own, asymmetric ones (`bitRange`): an n-bit field holds
//! −(2ⁿ⁻¹−1) ..= 2ⁿ⁻¹, and a field value above 2ⁿ⁻¹ reads as negative. Prometheus cuts chunks at
//! 120 samples; this encoder takes whatever slice it is given, up to [`MAX_SAMPLES`] (the count
//! is a u16). It is a measuring stick, not a storage format: it has no checksum and no version.

use super::CodecError;
use super::bits::{BitReader, BitWriter, unzigzag, zigzag};
use super::xor::{XorDecoder, XorEncoder};
use crate::model::Sample;

/// Most samples one baseline chunk holds (its count is a big-endian u16).
pub const MAX_SAMPLES: usize = u16::MAX as usize;

/// Encodes `samples` as a Prometheus XOR chunk.
///
/// Samples beyond [`MAX_SAMPLES`] are left out (the baseline's count field cannot say more);
/// timestamps are not checked, just as Prometheus' appender does not.
pub fn encode(samples: &[Sample]) -> Vec<u8> {
    let samples = &samples[..samples.len().min(MAX_SAMPLES)];
    let mut out = Vec::with_capacity(2 + samples.len() * 3);
    out.extend_from_slice(&(samples.len() as u16).to_be_bytes());
    let mut w = BitWriter::with_vec(out);
    let Some((first, rest)) = samples.split_first() else {
        return w.finish();
    };
    write_varint_bytes(&mut w, zigzag(first.timestamp_ms));
    let mut xor = XorEncoder::first(&mut w, first.value.to_bits());
    let mut prev_t = first.timestamp_ms;
    let mut prev_delta = 0u64;
    for (i, s) in rest.iter().enumerate() {
        let delta = s.timestamp_ms.wrapping_sub(prev_t) as u64;
        if i == 0 {
            write_varint_bytes(&mut w, delta);
        } else {
            write_dod(&mut w, delta.wrapping_sub(prev_delta) as i64);
        }
        xor.push(&mut w, s.value.to_bits());
        prev_t = s.timestamp_ms;
        prev_delta = delta;
    }
    w.finish()
}

/// Decodes a Prometheus XOR chunk. Never panics; allocates at most 16 bytes per sample that the
/// input's length can hold (each sample after the first takes at least two bits).
pub fn decode(chunk: &[u8]) -> Result<Vec<Sample>, CodecError> {
    let (count, body) = match chunk {
        [a, b, body @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), body),
        _ => return Err(CodecError::truncated("gorilla count")),
    };
    let mut out = Vec::with_capacity(count.min(1 + body.len() * 4));
    if count == 0 {
        return Ok(out);
    }
    let mut r = BitReader::new(body);
    let mut t = unzigzag(read_varint_bits(&mut r)?);
    let (mut xor, v) = XorDecoder::first(&mut r)?;
    out.push(Sample::new(t, f64::from_bits(v)));
    let mut delta = 0u64;
    for i in 1..count {
        if i == 1 {
            delta = read_varint_bits(&mut r)?;
        } else {
            delta = delta.wrapping_add(read_dod(&mut r)? as u64);
        }
        t = t.wrapping_add(delta as i64);
        let v = xor.next(&mut r)?;
        out.push(Sample::new(t, f64::from_bits(v)));
    }
    Ok(out)
}

fn write_varint_bytes(w: &mut BitWriter, mut v: u64) {
    while v >= 0x80 {
        w.write_byte((v as u8) | 0x80);
        v >>= 7;
    }
    w.write_byte(v as u8);
}

/// Reads a LEB128 varint from the bit stream.
fn read_varint_bits(r: &mut BitReader<'_>) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = r.read_byte("gorilla varint")?;
        if i == 9 && b > 1 {
            return Err(CodecError::corrupt("gorilla varint overflows 64 bits"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(CodecError::corrupt("gorilla varint overflows 64 bits"))
}

/// Prometheus' `bitRange`: −(2ⁿ⁻¹−1) ≤ x ≤ 2ⁿ⁻¹.
fn fits(x: i64, nbits: u32) -> bool {
    let half = 1i64 << (nbits - 1);
    -(half - 1) <= x && x <= half
}

fn write_dod(w: &mut BitWriter, dod: i64) {
    let bits = dod as u64;
    if dod == 0 {
        w.write_bit(false);
    } else if fits(dod, 14) {
        w.write(0b10, 2);
        w.write(bits, 14);
    } else if fits(dod, 17) {
        w.write(0b110, 3);
        w.write(bits, 17);
    } else if fits(dod, 20) {
        w.write(0b1110, 4);
        w.write(bits, 20);
    } else {
        w.write(0b1111, 4);
        w.write(bits, 64);
    }
}

fn read_dod(r: &mut BitReader<'_>) -> Result<i64, CodecError> {
    const WHAT: &str = "gorilla timestamp";
    let mut ones = 0;
    while ones < 4 && r.read_bit(WHAT)? {
        ones += 1;
    }
    let size = match ones {
        0 => return Ok(0),
        1 => 14,
        2 => 17,
        3 => 20,
        _ => return Ok(r.read(64, WHAT)? as i64),
    };
    let bits = r.read(size, WHAT)?;
    // Undo the two's-complement cut the way Prometheus does: above 2ⁿ⁻¹ is negative.
    Ok(if bits > 1 << (size - 1) {
        bits as i64 - (1i64 << size)
    } else {
        bits as i64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_prometheus_for_a_known_chunk() {
        // Two samples: header, zigzag varint of 1000 (0xd0 0x0f), the value's 64 bits, then the
        // uvarint delta 15 and a '0' bit (same value) padded to a byte.
        let chunk = encode(&[Sample::new(1000, 1.5), Sample::new(1015, 1.5)]);
        let mut expect = vec![0x00, 0x02, 0xd0, 0x0f];
        expect.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        expect.extend_from_slice(&[0x0f, 0x00]);
        assert_eq!(chunk, expect);
        assert_eq!(
            decode(&chunk),
            Ok(vec![Sample::new(1000, 1.5), Sample::new(1015, 1.5)])
        );
    }

    #[test]
    fn bucket_edges_round_trip() {
        // Each dod sits on an edge of Prometheus' asymmetric buckets.
        let dods = [
            0i64, 8192, -8191, 8193, -8192, 65536, -65535, 65537, 524288, -524287, 524289, -524288,
        ];
        let mut t = 0i64;
        let mut delta = 1_000_000i64;
        let mut samples = vec![Sample::new(t, 0.0)];
        for (i, d) in dods.iter().enumerate() {
            delta += d;
            t += delta;
            samples.push(Sample::new(t, i as f64));
        }
        assert_eq!(decode(&encode(&samples)), Ok(samples));
    }

    #[test]
    fn extreme_timestamps_round_trip_by_wrapping() {
        let samples = vec![
            Sample::new(i64::MIN, f64::NAN),
            Sample::new(i64::MIN + 1, -0.0),
            Sample::new(0, f64::INFINITY),
            Sample::new(i64::MAX - 1, f64::MIN_POSITIVE / 4.0),
            Sample::new(i64::MAX, f64::from_bits(0x7ff0_0000_0000_0002)),
        ];
        assert_eq!(decode(&encode(&samples)), Ok(samples));
    }

    #[test]
    fn empty_and_truncated_chunks() {
        assert_eq!(decode(&encode(&[])), Ok(vec![]));
        let chunk = encode(&[
            Sample::new(1, 2.0),
            Sample::new(2, 3.0),
            Sample::new(4, 5.0),
        ]);
        for cut in 0..chunk.len() {
            assert!(decode(&chunk[..cut]).is_err(), "cut at {cut}");
        }
    }
}

//! How each system cuts a series into chunks, as index ranges over its samples.
//!
//! - [`fixed`]: every `n` samples (Updraft's edge chunks: 256).
//! - [`utc_days`]: one chunk per UTC day (Updraft's core sealed blocks).
//! - [`prometheus_head`]: exactly as Prometheus' head appender cuts XOR chunks
//!   (`tsdb/head_append.go`, `memSeries.appendPreprocessor`, v2.48 to v3): a chunk never
//!   crosses a 2 h chunk-range boundary; once it holds 30 samples (¼ of the 120 target) its end is
//!   re-predicted so that the rest of the range splits into equal chunks of about 120
//!   (`computeChunkEndTime`); it is cut at 240 samples regardless, and whenever its encoded size
//!   exceeds 1,024 − 19 bytes (room for one maximal sample). Prometheus 2.42, the version
//!   DATASETS.md's peer figures were measured with, predates the byte limit (v2.48); it only
//!   matters for chunks of unrounded values, which reach ~1 KiB near 120 samples.
//!
//! The byte limit needs the chunk's size after each append, so [`XorSize`] tracks it bit by bit,
//! mirroring `xorAppender.Append` of `tsdb/chunkenc/xor.go`; a test checks it against the real
//! encoder on every chunk of a dataset.

use protocols::Sample;
use std::ops::Range;

/// Prometheus' default `--storage.tsdb.samples-per-chunk`.
pub const PROM_SAMPLES_PER_CHUNK: usize = 120;
/// The head's chunk range: the minimum block duration, 2 h.
pub const PROM_CHUNK_RANGE_MS: i64 = 2 * 3_600_000;
/// `chunkenc.MaxBytesPerXORChunk`.
pub const PROM_MAX_BYTES_PER_XOR_CHUNK: usize = 1024;

const DAY_MS: i64 = 86_400_000;

/// Consecutive chunks of `n` samples (the last may be shorter).
pub fn fixed(len: usize, n: usize) -> Vec<Range<usize>> {
    let n = n.max(1);
    (0..len).step_by(n).map(|s| s..(s + n).min(len)).collect()
}

/// One chunk per UTC day the samples fall in.
pub fn utc_days(samples: &[Sample]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..samples.len() {
        if samples[i].timestamp_ms.div_euclid(DAY_MS)
            != samples[i - 1].timestamp_ms.div_euclid(DAY_MS)
        {
            out.push(start..i);
            start = i;
        }
    }
    if start < samples.len() {
        out.push(start..samples.len());
    }
    out
}

/// `rangeForTimestamp`: the end of the chunk range holding `t`.
fn range_for_timestamp(t: i64, width: i64) -> i64 {
    // Go's integer division truncates toward zero, as Rust's does.
    (t / width) * width + width
}

/// `computeChunkEndTime`, float arithmetic and truncation included.
fn compute_chunk_end_time(start: i64, cur: i64, max: i64, ratio_to_full: f64) -> i64 {
    let n = (max - start) as f64 / ((cur - start + 1) as f64 * ratio_to_full);
    if n <= 1.0 {
        return max;
    }
    (start as f64 + (max - start) as f64 / n.floor()) as i64
}

/// The head chunk being filled.
struct HeadChunk {
    first: usize,
    samples: usize,
    min_time: i64,
    max_time: i64,
    size: XorSize,
}

impl HeadChunk {
    fn new(first: usize, t: i64) -> Self {
        Self {
            first,
            samples: 0,
            min_time: t,
            max_time: i64::MIN,
            size: XorSize::new(),
        }
    }
}

/// Cuts a series (timestamps strictly increasing) into the chunks Prometheus' head would cut.
pub fn prometheus_head(samples: &[Sample]) -> Vec<Range<usize>> {
    let max_bytes = PROM_MAX_BYTES_PER_XOR_CHUNK - 19;
    let mut out = Vec::new();
    let Some(first) = samples.first() else {
        return out;
    };
    let mut c = HeadChunk::new(0, first.timestamp_ms);
    let mut next_at = range_for_timestamp(first.timestamp_ms, PROM_CHUNK_RANGE_MS);
    let mut created = true;
    for (i, s) in samples.iter().enumerate() {
        let t = s.timestamp_ms;
        if i > 0 {
            created = false;
        }
        let cut = |c: &mut HeadChunk, next_at: &mut i64, out: &mut Vec<Range<usize>>| {
            out.push(c.first..i);
            *c = HeadChunk::new(i, t);
            *next_at = range_for_timestamp(t, PROM_CHUNK_RANGE_MS);
        };
        if !created && c.size.bytes() > max_bytes {
            cut(&mut c, &mut next_at, &mut out);
            created = true;
        }
        let n = c.samples;
        if n == 0 {
            c.min_time = t;
            next_at = range_for_timestamp(t, PROM_CHUNK_RANGE_MS);
        }
        if n == PROM_SAMPLES_PER_CHUNK / 4 {
            next_at = compute_chunk_end_time(c.min_time, c.max_time, next_at, 4.0);
        }
        if t >= next_at || n >= PROM_SAMPLES_PER_CHUNK * 2 {
            cut(&mut c, &mut next_at, &mut out);
        }
        c.size.append(t, s.value);
        c.samples += 1;
        c.max_time = t;
    }
    out.push(c.first..samples.len());
    out
}

/// The size of a Prometheus XOR chunk as samples are appended, without building it.
#[derive(Debug, Clone)]
pub struct XorSize {
    bits: u64,
    samples: u32,
    t: i64,
    v: u64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
}

impl Default for XorSize {
    fn default() -> Self {
        Self::new()
    }
}

fn uvarint_len(mut x: u64) -> u64 {
    let mut n = 1;
    while x >= 0x80 {
        x >>= 7;
        n += 1;
    }
    n
}

/// Go's `bitRange`: whether `x` fits the `nbits` delta-of-delta bucket.
fn bit_range(x: i64, nbits: u32) -> bool {
    -((1i64 << (nbits - 1)) - 1) <= x && x <= 1i64 << (nbits - 1)
}

impl XorSize {
    pub fn new() -> Self {
        Self {
            bits: 0,
            samples: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            leading: 0xff,
            trailing: 0,
        }
    }

    /// `len(chunk.Bytes())`: the 2-byte sample count plus the bit stream, rounded up to bytes.
    pub fn bytes(&self) -> usize {
        2 + self.bits.div_ceil(8) as usize
    }

    pub fn append(&mut self, t: i64, v: f64) {
        let mut t_delta = 0;
        match self.samples {
            0 => {
                let zigzag = ((t << 1) ^ (t >> 63)) as u64;
                self.bits += 8 * uvarint_len(zigzag) + 64;
            }
            1 => {
                t_delta = t.wrapping_sub(self.t) as u64;
                self.bits += 8 * uvarint_len(t_delta) + self.value_bits(v);
            }
            _ => {
                t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                self.bits += match dod {
                    0 => 1,
                    d if bit_range(d, 14) => 2 + 14,
                    d if bit_range(d, 17) => 3 + 17,
                    d if bit_range(d, 20) => 4 + 20,
                    _ => 4 + 64,
                } + self.value_bits(v);
            }
        }
        self.t = t;
        self.v = v.to_bits();
        self.t_delta = t_delta;
        self.samples += 1;
    }

    /// `writeVDelta`'s bit count, updating the leading/trailing window as it does.
    fn value_bits(&mut self, v: f64) -> u64 {
        let delta = v.to_bits() ^ self.v;
        if delta == 0 {
            return 1;
        }
        let leading = (delta.leading_zeros() as u8).min(31);
        let trailing = delta.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            2 + u64::from(64 - self.leading - self.trailing)
        } else {
            self.leading = leading;
            self.trailing = trailing;
            2 + 5 + 6 + u64::from(64 - leading - trailing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regular(n: usize, start: i64, step: i64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample::new(start + i as i64 * step, i as f64))
            .collect()
    }

    fn lens(r: &[Range<usize>]) -> Vec<usize> {
        r.iter().map(|r| r.len()).collect()
    }

    #[test]
    fn fixed_and_days_cover_every_sample_once() {
        assert_eq!(lens(&fixed(600, 256)), [256, 256, 88]);
        assert!(fixed(0, 256).is_empty());
        // 10 s samples over 2.5 days from midnight: 8640, 8640, 4320.
        let s = regular(21_600, 1_704_067_200_000, 10_000);
        assert_eq!(lens(&utc_days(&s)), [8640, 8640, 4320]);
    }

    #[test]
    fn prometheus_cuts_120_sample_chunks_at_15s() {
        // 15 s scrapes aligned to the range: 480 per 2 h range, four chunks of 120 each.
        let s = regular(5_760, 1_704_067_200_000, 15_000);
        let chunks = prometheus_head(&s);
        assert_eq!(chunks.len(), 48);
        assert!(chunks.iter().all(|c| c.len() == 120), "{:?}", lens(&chunks));
    }

    #[test]
    fn prometheus_never_crosses_a_2h_boundary() {
        // 60 s samples starting mid-range: first chunk ends at the range boundary.
        let start = 1_704_067_200_000 + 30 * 60_000;
        let s = regular(600, start, 60_000);
        let chunks = prometheus_head(&s);
        assert_eq!(chunks[0].len(), 90);
        for c in &chunks {
            let first = s[c.start].timestamp_ms / PROM_CHUNK_RANGE_MS;
            let last = s[c.end - 1].timestamp_ms / PROM_CHUNK_RANGE_MS;
            assert_eq!(first, last);
        }
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 600);
    }

    #[test]
    fn prometheus_predicts_near_equal_chunks_for_1s_samples() {
        // 7,200 samples per range. After 30 samples (29 s) Prometheus predicts
        // floor(7,200 s / 116 s) = 62 chunks, i.e. ends the first at 116.1 s: 117 samples; the
        // rest of the range is re-split the same way, 61 chunks in all.
        let s = regular(7_200, 1_704_067_200_000, 1_000);
        let chunks = prometheus_head(&s);
        assert_eq!(chunks.len(), 61, "{:?}", lens(&chunks));
        assert_eq!(chunks[0].len(), 117);
        assert!(chunks.iter().all(|c| (117..=119).contains(&c.len())));
    }

    #[test]
    fn prometheus_cuts_at_the_byte_limit() {
        // Random 64-bit values (~66 bits each) and jittered 10 s timestamps (16-bit
        // delta-of-delta): ~10 bytes a sample, so ~98 samples fill 1,005 bytes, well before the
        // time-based cut at ~120. (Real data rarely gets there: even random values at a regular
        // interval stay under 1,005 bytes at 117 samples.)
        let mut x: u64 = 1;
        // 700 samples: 7,000 s, within one 2 h range, so no chunk ends at a range boundary.
        let s: Vec<Sample> = (0..700)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let jitter = (x >> 40) as i64 % 201 - 100;
                Sample::new(1_704_067_200_000 + i * 10_000 + jitter, f64::from_bits(x))
            })
            .collect();
        let chunks = prometheus_head(&s);
        assert!(chunks.iter().all(|c| c.len() < 110), "{:?}", lens(&chunks));
        for c in &chunks[..chunks.len() - 1] {
            let mut size = XorSize::new();
            for x in &s[c.clone()] {
                size.append(x.timestamp_ms, x.value);
            }
            let bytes = size.bytes();
            assert!(
                bytes > PROM_MAX_BYTES_PER_XOR_CHUNK - 19,
                "{bytes} {:?}",
                lens(&chunks)
            );
            assert!(bytes <= PROM_MAX_BYTES_PER_XOR_CHUNK, "{bytes}");
        }
    }

    #[test]
    fn xor_size_counts_header_and_first_sample() {
        let mut s = XorSize::new();
        assert_eq!(s.bytes(), 2);
        s.append(1_704_067_200_000, 1.0);
        // Zigzag varint of a 2024 timestamp: 6 bytes; then 64 bits of value.
        assert_eq!(s.bytes(), 2 + 6 + 8);
        s.append(1_704_067_215_000, 1.0);
        // uvarint(15000) is 2 bytes, an unchanged value 1 bit.
        assert_eq!(s.bytes(), 2 + 6 + 8 + 2 + 1);
        s.append(1_704_067_230_000, 1.0);
        // dod 0 and value unchanged: 2 bits, still within the same byte.
        assert_eq!(s.bytes(), 2 + 6 + 8 + 2 + 1);
        assert!(bit_range(8192, 14) && !bit_range(8193, 14) && bit_range(-8191, 14));
        assert!(!bit_range(-8192, 14));
    }

    #[test]
    fn compute_chunk_end_time_matches_go() {
        // Start at a range boundary, 30 samples of 15 s seen: 4 chunks predicted in 2 h.
        let start = 1_704_067_200_000;
        let cur = start + 29 * 15_000;
        let max = start + PROM_CHUNK_RANGE_MS;
        assert_eq!(
            compute_chunk_end_time(start, cur, max, 4.0),
            start + 1_800_000
        );
        assert_eq!(compute_chunk_end_time(start, max - 1, max, 4.0), max);
    }
}

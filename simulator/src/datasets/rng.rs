//! The random streams behind every reference dataset, specified here rather than borrowed.
//!
//! A dataset is defined by its bytes, so the generator must not change when a dependency is
//! upgraded. `rand::rngs::StdRng` is explicitly not stable across `rand` versions and the
//! distributions in `rand_distr` may change their algorithms, so everything is written out:
//!
//! - **Stream seed**: FNV-1a 64 over `dataset name ‖ 0x00 ‖ seed (u64 LE) ‖ entity index (u64
//!   LE)`. One stream per entity, so entity 7 is the same whatever the fleet size.
//! - **Generator**: xoshiro256** (Blackman & Vigna, 2018), its 256-bit state filled by four
//!   SplitMix64 outputs from the stream seed (the seeding the authors recommend).
//! - **Uniform f64** in `[0, 1)`: the top 53 bits of one output × 2⁻⁵³.
//! - **Uniform integer** in `lo..=hi`: Lemire's multiply-shift of one output by the span, without
//!   rejection (bias below 2⁻⁴⁰ for every span used here, and one output per draw, always).
//! - **Normal**: Box–Muller, cosine branch only: two uniforms per draw, always.
//! - **Transcendentals** (`ln`, `exp`, `sin`, `cos`) come from the `libm` crate, a pure-Rust port of
//!   musl's libm, so the values are bit-identical on every platform; the standard library would
//!   call the platform's libm, whose last bit may differ between systems.
//!
//! Frozen: changing any of this changes every dataset and every published figure.

/// FNV-1a, 64 bit.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The seed of one entity's stream.
pub fn stream_seed(dataset: &str, seed: u64, entity: u64) -> u64 {
    fnv1a64(&[
        dataset.as_bytes(),
        &[0],
        &seed.to_le_bytes(),
        &entity.to_le_bytes(),
    ])
}

/// SplitMix64 (Steele, Lea & Flood, 2014): only used to expand a seed into xoshiro state.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256** with the helpers every generator uses. See the module doc for the exact rules.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn from_seed(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self { s }
    }

    /// The stream of entity `entity` of `dataset` under `seed`.
    pub fn for_entity(dataset: &str, seed: u64, entity: u64) -> Self {
        Self::from_seed(stream_seed(dataset, seed, entity))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `lo..=hi` (requires `lo <= hi`).
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo) as u64 + 1;
        let scaled = (u128::from(self.next_u64()) * u128::from(span)) >> 64;
        lo + scaled as i64
    }

    /// Uniform index in `0..n` (requires `n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        self.int(0, n as i64 - 1) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal by Box–Muller (cosine branch).
    pub fn std_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]: ln stays finite
        let u2 = self.unit();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)
    }

    /// Normal with mean `mean` and standard deviation `sd`.
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        mean + sd * self.std_normal()
    }
}

/// Rounds to `decimals` places and returns the double nearest that decimal, which is what a
/// device printing the value with that many decimals would send. `round(x·10ᵈ)` is an exact
/// integer and IEEE division is correctly rounded, so `n / 10ᵈ` *is* the double nearest the
/// decimal `n·10⁻ᵈ` (10ᵈ is exact for d ≤ 22). `+ 0.0` turns −0 into +0.
pub fn round_to(x: f64, decimals: u32) -> f64 {
    let scale = 10f64.powi(decimals as i32);
    libm::round(x * scale) / scale + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_reference_vector() {
        // Reference output of xoshiro256** for state {1, 2, 3, 4}, from the authors' C code.
        let mut r = Rng { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [11520, 0, 1509978240, 1215971899390074240],
            "xoshiro256** diverged from the reference"
        );
    }

    #[test]
    fn splitmix_matches_reference_vector() {
        // SplitMix64 from seed 0: first output is 0xe220a8397b1dcdaf (reference C code).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn fnv_matches_reference_vector() {
        assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn streams_differ_by_name_seed_and_entity() {
        let a = stream_seed("iot-trucks", 1, 7);
        assert_ne!(a, stream_seed("sensor-mix", 1, 7));
        assert_ne!(a, stream_seed("iot-trucks", 2, 7));
        assert_ne!(a, stream_seed("iot-trucks", 1, 8));
    }

    #[test]
    fn ranges_hold() {
        let mut r = Rng::from_seed(42);
        for _ in 0..100_000 {
            let i = r.int(-50, 50);
            assert!((-50..=50).contains(&i));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.std_normal().is_finite());
        }
        // Both ends of an integer range are reachable.
        let seen: std::collections::HashSet<i64> = (0..10_000).map(|_| r.int(0, 5)).collect();
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn normal_has_the_right_moments() {
        let mut r = Rng::from_seed(3);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal(2.0, 3.0)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 2.0).abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 3.0).abs() < 0.05, "sd {}", var.sqrt());
    }

    #[test]
    fn rounding_gives_the_shortest_decimal() {
        assert_eq!(round_to(12.345_678, 1).to_string(), "12.3");
        assert_eq!(round_to(0.1 + 0.2, 2).to_string(), "0.3");
        assert_eq!(round_to(-0.04, 1).to_bits(), 0.0f64.to_bits());
        assert_eq!(round_to(45.123_456_7, 5).to_string(), "45.12346");
    }
}

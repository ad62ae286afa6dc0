//! Round trips, choices, corruption handling and the property tests of the chunk codec.

use proptest::prelude::*;

use super::*;
use crate::model::Sample;

const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

const ALL_TS: [TsEncoding; 2] = [TsEncoding::DeltaOfDelta, TsEncoding::Grid];
const ALL_VALUES: [ValueEncoding; 8] = [
    ValueEncoding::RunLength,
    ValueEncoding::Decimal,
    ValueEncoding::DecimalDelta,
    ValueEncoding::DecimalDeltaOfDelta,
    ValueEncoding::Xor,
    ValueEncoding::FloatBits,
    ValueEncoding::FloatBitsDelta,
    ValueEncoding::FloatBitsDeltaOfDelta,
];

fn samples(
    ts: impl IntoIterator<Item = i64>,
    values: impl IntoIterator<Item = f64>,
) -> Vec<Sample> {
    ts.into_iter()
        .zip(values)
        .map(|(t, v)| Sample::new(t, v))
        .collect()
}

/// Decodes `chunk` three ways (whole, iterator, iterator after seeks) and checks each.
fn check_decodes_to(chunk: &[u8], expect: &[Sample]) {
    assert_eq!(decode(chunk).as_deref(), Ok(expect));
    let iterated: Result<Vec<_>, _> = ChunkIter::new(chunk).expect("iter").collect();
    assert_eq!(iterated.as_deref(), Ok(expect));
    let h = header(chunk).expect("header");
    assert_eq!(h.count as usize, expect.len());
    assert_eq!(h.min_ts, expect[0].timestamp_ms);
    assert_eq!(h.max_ts, expect[expect.len() - 1].timestamp_ms);
    assert_eq!(h.version, FORMAT_VERSION);
}

/// Encodes with the automatic choice and with every forced combination that applies.
fn round_trip_all_ways(expect: &[Sample]) {
    let chunk = encode(expect).expect("encode");
    check_decodes_to(&chunk, expect);
    for ts in ALL_TS {
        for v in ALL_VALUES {
            let chunk = Encoder::new()
                .ts_encoding(ts)
                .value_encoding(v)
                .encode(expect)
                .expect("forced encode");
            let h = header(&chunk).expect("header");
            assert_eq!(h.value_encoding, v);
            if expect.len() >= 2 {
                assert_eq!(h.ts_encoding, ts);
            }
            check_decodes_to(&chunk, expect);
        }
    }
}

fn walk(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed;
    let mut v = 2150i64;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v += (x >> 60) as i64 - 7;
            v as f64 / 100.0
        })
        .collect()
}

fn jittered(n: usize, seed: u64) -> Vec<i64> {
    let mut x = seed;
    (0..n as i64)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1_704_067_200_000 + i * 10_000 + (x >> 57) as i64 - 50
        })
        .collect()
}

#[test]
fn special_values_round_trip_bit_exactly() {
    let specials = [
        f64::from_bits(STALE_NAN),
        f64::NAN,
        f64::from_bits(0xfff8_dead_beef_0001),
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        0.0,
        f64::MIN_POSITIVE / 3.0,
        -f64::from_bits(1),
        f64::MAX,
        f64::MIN,
        1e300,
        9.3e18,
        -9.3e18,
        21.5,
        0.1,
    ];
    let data = samples(0..specials.len() as i64, specials);
    round_trip_all_ways(&data);
    // Exceptions inside a decimal series, including the first and the last sample.
    let mut values = walk(300, 7);
    values[0] = f64::from_bits(STALE_NAN);
    values[150] = -0.0;
    values[299] = f64::from_bits(STALE_NAN);
    round_trip_all_ways(&samples((0..300).map(|i| i * 1000), values));
}

#[test]
fn extreme_timestamps_round_trip() {
    let ts = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
    round_trip_all_ways(&samples(ts, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]));
    // Deltas that overflow i64, on their own and with a grid around them.
    round_trip_all_ways(&samples([i64::MIN, i64::MAX], [1.0, 1.0]));
    round_trip_all_ways(&samples([i64::MIN, 0, i64::MAX], [1.0, 2.0, 1.0]));
    let mut ts: Vec<i64> = (0..200).map(|i| i64::MIN + i * 10).collect();
    ts.extend((0..200).map(|i| i64::MAX - 2000 + i * 10));
    round_trip_all_ways(&samples(ts, walk(400, 3)));
}

#[test]
fn every_length_around_block_edges_round_trips() {
    for n in [1, 2, 3, 4, 127, 128, 129, 255, 256, 257, 1000] {
        round_trip_all_ways(&samples(jittered(n, n as u64), walk(n, n as u64)));
    }
}

#[test]
fn chooses_the_encodings_the_data_calls_for() {
    let n = 1000;
    let grid: Vec<i64> = (0..n).map(|i| 1_000_000 + i * 15_000).collect();
    let irregular: Vec<i64> = (0..n).map(|i| i * i * 7 + i * 13).collect();
    let case = |ts: &[i64], values: Vec<f64>| {
        let h =
            header(&encode(&samples(ts.iter().copied(), values)).expect("encode")).expect("header");
        (h.ts_encoding, h.value_encoding)
    };
    assert_eq!(
        case(&grid, vec![1.0; n as usize]),
        (TsEncoding::Grid, ValueEncoding::Const)
    );
    assert_eq!(case(&jittered(1000, 1), walk(1000, 1)).0, TsEncoding::Grid);
    assert_eq!(case(&irregular, walk(1000, 1)).0, TsEncoding::DeltaOfDelta);
    assert_eq!(case(&grid, walk(1000, 2)).1, ValueEncoding::DecimalDelta);
    let door: Vec<f64> = (0..n).map(|i| f64::from(u8::from(i % 200 > 180))).collect();
    assert_eq!(case(&grid, door).1, ValueEncoding::RunLength);
    let counter: Vec<f64> = (0..n).map(|i| (i * 1000 + i * i) as f64).collect();
    assert_eq!(case(&grid, counter).1, ValueEncoding::DecimalDeltaOfDelta);
    let noise: Vec<f64> = walk(1000, 5)
        .iter()
        .map(|v| v.sin() * 1.000_000_1)
        .collect();
    assert!(matches!(
        case(&grid, noise).1,
        ValueEncoding::Xor | ValueEncoding::FloatBits | ValueEncoding::FloatBitsDelta
    ));
}

#[test]
fn jittered_grid_costs_the_jitter_not_four_times_it() {
    // ±50 ms on a 10 s grid: 7 bits a sample on the grid, 16+ under delta-of-delta.
    let data = samples(jittered(8640, 9), vec![0.0; 8640]);
    let grid = Encoder::new()
        .ts_encoding(TsEncoding::Grid)
        .encode(&data)
        .expect("grid");
    let dod = Encoder::new()
        .ts_encoding(TsEncoding::DeltaOfDelta)
        .encode(&data)
        .expect("dod");
    assert!(grid.len() < 8640 * 7 / 8 + 64, "grid {} bytes", grid.len());
    assert!(dod.len() > 8640 * 12 / 8, "dod {} bytes", dod.len());
    assert_eq!(encode(&data).expect("auto").len(), grid.len());
}

#[test]
fn missed_ticks_are_exceptions_not_a_new_grid() {
    let mut ts = jittered(2000, 4);
    ts.retain(|t| (t / 10_000) % 97 != 0);
    let data = samples(ts.iter().copied(), vec![1.5; ts.len()]);
    let chunk = encode(&data).expect("encode");
    assert_eq!(
        header(&chunk).expect("header").ts_encoding,
        TsEncoding::Grid
    );
    assert!(
        chunk.len() < ts.len() * 7 / 8 + 200,
        "{} bytes",
        chunk.len()
    );
    check_decodes_to(&chunk, &data);
}

#[test]
fn tiny_chunks_stay_small() {
    // Header, CRC and a millisecond timestamp of today: 16 bytes, what Prometheus needs too.
    let one = encode(&[Sample::new(1_704_067_200_123, 21.5)]).expect("encode");
    assert!(one.len() <= 16, "1 sample: {} bytes", one.len());
    for n in 2..=10 {
        let data = samples(jittered(n, 1), walk(n, 1));
        let ours = encode(&data).expect("encode").len();
        let base = gorilla::encode(&data).len();
        assert!(ours <= base, "{n} samples: {ours} bytes, gorilla {base}");
    }
}

#[test]
fn peaked_deltas_are_rice_coded_below_their_packed_width() {
    // A rounded walk: deltas mostly 0 and ±1, now and then ±3, which would force 3-bit packing.
    let mut x = 11u64;
    let mut v = 10_000i64;
    let values: Vec<f64> = (0..4096)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v += match x >> 58 {
                0 => -3,
                1 => 3,
                2..=20 => -1,
                21..=39 => 1,
                _ => 0,
            };
            v as f64 / 10.0
        })
        .collect();
    let data = samples((0..4096).map(|i| i * 60_000), values);
    let chunk = encode(&data).expect("encode");
    assert_eq!(
        header(&chunk).expect("header").value_encoding,
        ValueEncoding::DecimalDelta
    );
    // Packing needs 3 bits a sample here; Rice about 2.1 (the entropy is 1.8).
    assert!(chunk.len() < 4096 * 5 / 16, "{} bytes", chunk.len());
    check_decodes_to(&chunk, &data);
}

#[test]
fn decimal_beats_gorilla_by_far_on_two_decimal_temperatures() {
    let data = samples(jittered(8640, 2), walk(8640, 2));
    let ours = encode(&data).expect("encode").len();
    let base = gorilla::encode(&data).len();
    assert!(ours * 3 < base, "ours {ours} vs gorilla {base}");
}

#[test]
fn constant_chunks_are_padded_to_the_allocation_bound() {
    let n = 16_384;
    let data = samples((0..n).map(|i| i * 1000), vec![1.0; n as usize]);
    let chunk = encode(&data).expect("encode");
    assert_eq!(chunk.len(), n as usize / MAX_SAMPLES_PER_BYTE);
    check_decodes_to(&chunk, &data);
}

#[test]
fn encoder_rejects_bad_input() {
    assert_eq!(encode(&[]), Err(CodecError::Empty));
    assert_eq!(
        encode(&samples([1, 2, 2], [0.0; 3])),
        Err(CodecError::Unsorted { index: 2 })
    );
    assert_eq!(
        encode(&samples([5, 4], [0.0; 2])),
        Err(CodecError::Unsorted { index: 1 })
    );
    let big = vec![Sample::new(0, 0.0); MAX_SAMPLES + 1];
    assert!(matches!(
        encode(&big),
        Err(CodecError::TooManySamples { .. })
    ));
    assert_eq!(
        Encoder::new()
            .value_encoding(ValueEncoding::Const)
            .encode(&samples([1, 2], [0.0, 1.0])),
        Err(CodecError::ValueEncodingNotApplicable(ValueEncoding::Const))
    );
}

/// Rewrites a chunk's CRC so that a deliberate change reaches the decoders.
fn reseal(chunk: &mut [u8]) {
    let n = chunk.len() - 4;
    let crc = crc32c::crc32c(&chunk[..n]);
    chunk[n..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn version_and_checksum_are_checked_first() {
    let mut chunk = encode(&samples([1, 2, 3], [1.0, 2.0, 3.0])).expect("encode");
    let mut flipped = chunk.clone();
    flipped[3] ^= 0x10;
    assert!(matches!(decode(&flipped), Err(CodecError::Checksum { .. })));
    assert!(matches!(header(&flipped), Err(CodecError::Checksum { .. })));
    chunk[0] = FORMAT_VERSION + 1;
    let err = decode(&chunk).expect_err("newer version");
    assert_eq!(
        err,
        CodecError::UnsupportedVersion {
            version: FORMAT_VERSION + 1,
            max: FORMAT_VERSION
        }
    );
    assert!(
        err.to_string()
            .contains("unsupported chunk format version 2")
    );
    chunk[0] = 0;
    assert!(matches!(
        decode(&chunk),
        Err(CodecError::UnsupportedVersion { .. })
    ));
    assert!(matches!(decode(&[]), Err(CodecError::Truncated { .. })));
}

#[test]
fn a_count_beyond_the_length_bound_is_refused_before_allocating() {
    // A short chunk claiming a million constant samples.
    let mut chunk = vec![FORMAT_VERSION, 0x00];
    bits::put_uvarint(&mut chunk, 1_000_000);
    bits::put_varint(&mut chunk, 0);
    bits::put_uvarint(&mut chunk, 999_999);
    bits::put_uvarint(&mut chunk, 0);
    chunk.extend_from_slice(&[0, 2]);
    chunk.extend_from_slice(&[0; 4]);
    reseal(&mut chunk);
    assert!(matches!(decode(&chunk), Err(CodecError::Corrupt { .. })));
}

#[test]
fn corruption_behind_a_valid_crc_is_an_error_not_a_panic() {
    let data = samples(jittered(300, 5), walk(300, 5));
    for ts in ALL_TS {
        for v in ALL_VALUES {
            let chunk = Encoder::new()
                .ts_encoding(ts)
                .value_encoding(v)
                .encode(&data)
                .expect("encode");
            // Cut anywhere: a resealed prefix must not decode to the full data.
            for cut in 5..chunk.len() - 4 {
                let mut short = chunk[..cut].to_vec();
                short.extend_from_slice(&[0; 4]);
                reseal(&mut short);
                assert_ne!(decode(&short).as_deref(), Ok(&data[..]), "cut {cut}");
            }
        }
    }
}

#[test]
fn trailing_garbage_is_refused() {
    let mut chunk = encode(&samples(jittered(50, 1), walk(50, 1))).expect("encode");
    let crc_at = chunk.len() - 4;
    chunk.insert(crc_at, 7);
    reseal(&mut chunk);
    assert!(matches!(decode(&chunk), Err(CodecError::Corrupt { .. })));
}

#[test]
fn seek_finds_the_first_sample_at_or_after() {
    let ts: Vec<i64> = (0..1000).map(|i| i * 10).collect();
    let data = samples(ts.iter().copied(), walk(1000, 8));
    let chunk = encode(&data).expect("encode");
    for target in [
        -5,
        0,
        1,
        9,
        10,
        1275,
        1280,
        1281,
        5000,
        9990,
        9991,
        i64::MAX,
    ] {
        let mut it = ChunkIter::new(&chunk).expect("iter");
        it.seek(target);
        let expect = data.iter().find(|s| s.timestamp_ms >= target).copied();
        assert_eq!(it.next().transpose(), Ok(expect), "seek {target}");
    }
    // Forward only, and seeking within the current block.
    let mut it = ChunkIter::new(&chunk).expect("iter");
    it.seek(5000);
    it.seek(100);
    assert_eq!(it.next(), Some(Ok(data[500])));
    it.seek(5015);
    assert_eq!(it.next(), Some(Ok(data[502])));
    let rest: Result<Vec<_>, _> = it.collect();
    assert_eq!(rest.as_deref(), Ok(&data[503..]));
}

#[test]
fn gorilla_baseline_round_trips_datasets_shapes() {
    let data = samples(jittered(1000, 3), walk(1000, 3));
    assert_eq!(gorilla::decode(&gorilla::encode(&data)), Ok(data));
}

fn arb_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        (-100_000i64..100_000, 0u32..6).prop_map(|(m, d)| m as f64 / 10f64.powi(d as i32)),
        Just(f64::from_bits(STALE_NAN)),
        Just(-0.0),
        Just(0.0),
        Just(1.0),
    ]
}

fn arb_samples() -> impl Strategy<Value = Vec<Sample>> {
    let ts = prop_oneof![
        // Arbitrary distinct timestamps.
        prop::collection::btree_set(any::<i64>(), 1..300)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>()),
        // A jittered grid with gaps.
        (
            1i64..100_000,
            0i64..100,
            any::<i64>(),
            prop::collection::vec(0u8..4, 1..600)
        )
            .prop_map(|(p, jitter, start, gaps)| {
                let mut t = start / 2;
                let mut out: Vec<i64> = Vec::new();
                for (i, g) in gaps.iter().enumerate() {
                    t = t.saturating_add(p * (1 + i64::from(*g == 0)));
                    let j = (i as i64 * 7919) % (jitter + 1);
                    let v = t.saturating_add(j);
                    if out.last().is_none_or(|&l| v > l) {
                        out.push(v);
                    }
                }
                out
            }),
    ];
    ts.prop_flat_map(|ts| {
        let n = ts.len();
        (
            Just(ts),
            prop_oneof![
                prop::collection::vec(arb_value(), n),
                // Runs of a few values.
                prop::collection::vec(prop::sample::select(vec![0.0, 1.0, 2.5]), n),
            ],
        )
    })
    .prop_map(|(ts, values)| samples(ts, values))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn round_trip_of_arbitrary_samples(data in arb_samples(), ts in 0usize..3, v in 0usize..9) {
        let mut enc = Encoder::new();
        if ts < 2 {
            enc = enc.ts_encoding(ALL_TS[ts]);
        }
        if v < 8 {
            enc = enc.value_encoding(ALL_VALUES[v]);
        }
        let chunk = enc.encode(&data).expect("encode");
        prop_assert_eq!(decode(&chunk), Ok(data.clone()));
        let iterated: Result<Vec<_>, _> = ChunkIter::new(&chunk).expect("iter").collect();
        prop_assert_eq!(iterated, Ok(data));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), t in any::<i64>()) {
        exercise(&bytes, t);
        let mut sealed = bytes;
        if sealed.len() >= 5 {
            sealed[0] = FORMAT_VERSION;
            reseal(&mut sealed);
            exercise(&sealed, t);
        }
    }

    #[test]
    fn mutated_valid_chunks_never_panic(
        data in arb_samples(),
        ts in 0usize..2,
        v in 0usize..9,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        t in any::<i64>(),
    ) {
        let mut enc = Encoder::new().ts_encoding(ALL_TS[ts]);
        if v < 8 {
            enc = enc.value_encoding(ALL_VALUES[v]);
        }
        let chunk = enc.encode(&data).expect("encode");
        let mut bad = chunk;
        for (at, byte) in edits {
            let i = at.index(bad.len() - 4);
            bad[i] = byte;
        }
        reseal(&mut bad);
        exercise(&bad, t);
    }

    #[test]
    fn gorilla_round_trip(data in arb_samples()) {
        prop_assert_eq!(gorilla::decode(&gorilla::encode(&data)), Ok(data));
    }

    #[test]
    fn gorilla_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = gorilla::decode(&bytes);
    }
}

/// Runs every decoding entry point over `bytes`; only panics count as failures.
fn exercise(bytes: &[u8], t: i64) {
    let _ = header(bytes);
    let whole = decode(bytes);
    if let Ok(mut it) = ChunkIter::new(bytes) {
        let streamed: Result<Vec<_>, _> = it.by_ref().collect();
        // Both ways of decoding agree.
        assert_eq!(streamed.is_ok(), whole.is_ok());
    }
    if let Ok(mut it) = ChunkIter::new(bytes) {
        it.seek(t);
        for s in it.by_ref().take(3) {
            let _ = s;
        }
        it.seek(t.saturating_add(1000));
        for s in it {
            let _ = s;
        }
    }
}

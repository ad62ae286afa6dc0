//! Feeds arbitrary bytes to every chunk decoder: the Updraft chunk (whole, streamed, with
//! seeks) and the Gorilla baseline. Only a panic, an abort or a sanitizer report is a failure.
//!
//! Random bytes rarely pass the CRC, so each input is also tried with a valid version byte and
//! a recomputed CRC, which sends it past the checksum into the section decoders. Whatever
//! decodes must re-encode and decode to the same samples.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::codec::{self, ChunkIter, gorilla};

fuzz_target!(|data: &[u8]| {
    exercise(data);
    if data.len() >= 5 {
        let mut sealed = data.to_vec();
        sealed[0] = codec::FORMAT_VERSION;
        let body = sealed.len() - 4;
        let crc = crc32c::crc32c(&sealed[..body]);
        sealed[body..].copy_from_slice(&crc.to_le_bytes());
        exercise(&sealed);
    }
    let _ = gorilla::decode(data);
});

fn exercise(bytes: &[u8]) {
    let _ = codec::header(bytes);
    let whole = codec::decode(bytes);
    if let Ok(it) = ChunkIter::new(bytes) {
        let streamed: Result<Vec<_>, _> = it.collect();
        assert_eq!(
            streamed.is_ok(),
            whole.is_ok(),
            "decode and iterate disagree"
        );
        if let (Ok(a), Ok(b)) = (&streamed, &whole) {
            assert!(a == b, "decode and iterate return different samples");
        }
    }
    if let Ok(mut it) = ChunkIter::new(bytes) {
        // Seek to a timestamp taken from the input, then drain.
        let t = bytes
            .iter()
            .take(8)
            .fold(0i64, |acc, &b| (acc << 8) | i64::from(b));
        it.seek(t);
        for s in it.by_ref().take(3) {
            let _ = s;
        }
        it.seek(t.saturating_add(1000));
        for s in it {
            let _ = s;
        }
    }
    if let Ok(samples) = whole {
        let again = codec::encode(&samples).expect("decoded samples re-encode");
        assert!(
            codec::decode(&again).as_deref() == Ok(&samples[..]),
            "re-encoded chunk decodes differently"
        );
    }
}

//! Feeds arbitrary bytes to the wire frame decoder (`Message::decode`), as the core's QUIC
//! ingest and the agent's uplink receive them. Only a panic, an abort or a sanitizer report is
//! a failure.
//!
//! A frame has no checksum or length prefix, only a version and a kind byte, and random bytes
//! rarely start with the right version; so each input is also tried behind the current
//! version (its first byte then picks the kind) and behind the version and every known kind
//! (1 to 4), which sends it into each message's body decoder. Whatever decodes must re-encode
//! to a frame that decodes to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::wire::{Message, WIRE_VERSION};

/// The kind bytes of `Message`'s variants, and one past them (an unknown kind).
const KINDS: std::ops::RangeInclusive<u8> = 1..=5;

fuzz_target!(|data: &[u8]| {
    exercise(data);
    let mut frame = Vec::with_capacity(data.len() + 2);
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(data);
    exercise(&frame);
    for kind in KINDS {
        frame.truncate(1);
        frame.push(kind);
        frame.extend_from_slice(data);
        exercise(&frame);
    }
});

fn exercise(frame: &[u8]) {
    let Ok(message) = Message::decode(frame) else {
        return;
    };
    let encoded = message.encode();
    assert!(encoded.len() <= frame.len(), "re-encoding grew the frame");
    let again = Message::decode(&encoded).expect("a re-encoded frame decodes");
    assert_eq!(again, message, "a re-encoded frame decodes differently");
    assert!(again.encode() == encoded, "encoding is not canonical");
    if let Message::WriteBatch(batch) = &message {
        assert!(
            batch.encode_frame() == encoded,
            "encode_frame differs from encode"
        );
        // Chunk headers are read on the core's ingest path; the chunk bytes are arbitrary.
        let _ = batch.sample_count();
    }
}

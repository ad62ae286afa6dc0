//! Feeds arbitrary bytes to the Prometheus remote_write decoder (snappy, then protobuf), as
//! the core's `/api/v1/write` receives them; each input is also tried snappy-compressed, which
//! sends it past the snappy layer into the protobuf decoder. Only a panic, an abort or a
//! sanitizer report is a failure; the decoded-size bound must hold.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::remote_write;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = remote_write::decode_request(data, MAX);
    if let Ok(body) = remote_write::snappy_compress(data) {
        let decoded = remote_write::decode_request(&body, MAX);
        if data.len() > MAX {
            assert!(decoded.is_err());
        }
    }
});

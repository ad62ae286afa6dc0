//! Feeds arbitrary bytes to the core's WAL record decoder, as replay reads records back after
//! a crash (a torn or damaged record must be refused, never panic). Only a panic, an abort or
//! a sanitizer report is a failure.
//!
//! Each input is also tried behind the header of every record kind (an agent's wire frame,
//! a sample batch, a retention drop, a series removal), which sends it into that kind's body
//! decoder. Whatever decodes must
//! re-encode to a record that decodes to the same batch (checked inside
//! `core_node::fuzzing::wal_record_round_trip`, as the codec is crate-private).

#![no_main]

use core_node::fuzzing::wal_record_round_trip;
use libfuzzer_sys::fuzz_target;

/// Version 1 (`protocols::wire::WIRE_VERSION`), then a kind: an agent's `WriteBatch` frame
/// (1), a `SampleBatch` (0x80), a partition drop (0x81) or a series removal (0x82). The
/// fuzzer also finds kinds missing here through the raw input (the decoder compares the kind
/// byte), but listing a new kind reaches it at once.
const HEADERS: [[u8; 2]; 4] = [[1, 1], [1, 0x80], [1, 0x81], [1, 0x82]];

fuzz_target!(|data: &[u8]| {
    wal_record_round_trip(data);
    let mut record = Vec::with_capacity(data.len() + 2);
    for header in HEADERS {
        record.clear();
        record.extend_from_slice(&header);
        record.extend_from_slice(data);
        wal_record_round_trip(&record);
    }
});

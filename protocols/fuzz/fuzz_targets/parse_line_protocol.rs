//! Feeds arbitrary text to the InfluxDB line protocol parser (it faces the network at the
//! core's `/write` and MQTT payloads at the edge). Only a panic, an abort or a sanitizer
//! report is a failure. Every line that parses must be written back and read again unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::line_protocol;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (number, line) in line_protocol::parse(text).numbered() {
        assert!(number >= 1);
        let Ok(line) = line else { continue };
        let written = line.to_string();
        let again: Vec<_> = line_protocol::parse(&written).collect();
        assert_eq!(again.len(), 1, "{written:?}");
        assert_eq!(again[0].as_ref().ok(), Some(&line), "{written:?}");
    }
});

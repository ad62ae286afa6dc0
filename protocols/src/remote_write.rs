//! Prometheus remote_write 1.0: the protobuf messages and the snappy framing, to decode what a
//! Prometheus server sends and to encode requests in tests and the simulator.
//!
//! # Format
//!
//! The HTTP body is a `WriteRequest` protobuf (`prometheus/prompb/remote.proto`,
//! `types.proto`) compressed with snappy's *block* format (not the framed stream format):
//!
//! ```text
//! WriteRequest { repeated TimeSeries timeseries = 1; }                  // 3 = metadata
//! TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; } // 3 = exemplars, 4 = histograms
//! Label        { string name = 1; string value = 2; }
//! Sample       { double value = 1; int64 timestamp = 2; }              // timestamp in ms
//! ```
//!
//! The structs are hand-written (no protoc at build time) and declare only the fields above.
//! Fields they do not declare (metadata, exemplars, native histograms, anything newer) are
//! skipped by the decoder, as protobuf requires, so a request carrying them still decodes.
//! Values are carried bit for bit, Prometheus' stale marker (`0x7ff0000000000002`) included.
//!
//! # Bounds
//!
//! [`decode_request`] reads the decoded length from the snappy header and refuses a body that
//! would decode to more than the caller's limit *before* decompressing anything, so a small
//! hostile body cannot make the receiver allocate gigabytes.

/// A remote_write request: the series and their samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// One series: its labels (`__name__` among them) and samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A receiver's default bound on a request's decoded size.
pub const DEFAULT_MAX_DECODED_BYTES: usize = 32 * 1024 * 1024;

/// Why a remote_write body could not be read. Every case is the sender's fault: retrying the
/// same body cannot succeed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("corrupt snappy block: {0}")]
    Snappy(#[from] snap::Error),
    #[error("body decodes to {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("malformed protobuf WriteRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Compresses `bytes` with snappy's block format.
pub fn snappy_compress(bytes: &[u8]) -> Result<Vec<u8>, RemoteWriteError> {
    Ok(snap::raw::Encoder::new().compress_vec(bytes)?)
}

/// Decompresses a snappy block, refusing (before any work) one whose header announces more
/// than `max_decoded_bytes`.
pub fn snappy_decompress(
    compressed: &[u8],
    max_decoded_bytes: usize,
) -> Result<Vec<u8>, RemoteWriteError> {
    let len = snap::raw::decompress_len(compressed)?;
    if len > max_decoded_bytes {
        return Err(RemoteWriteError::TooLarge {
            len,
            max: max_decoded_bytes,
        });
    }
    Ok(snap::raw::Decoder::new().decompress_vec(compressed)?)
}

/// The HTTP body of `request`: protobuf, then snappy.
pub fn encode_request(request: &WriteRequest) -> Result<Vec<u8>, RemoteWriteError> {
    snappy_compress(&prost::Message::encode_to_vec(request))
}

/// Reads an HTTP body: snappy (bounded by `max_decoded_bytes`), then protobuf.
pub fn decode_request(
    body: &[u8],
    max_decoded_bytes: usize,
) -> Result<WriteRequest, RemoteWriteError> {
    let raw = snappy_decompress(body, max_decoded_bytes)?;
    Ok(<WriteRequest as prost::Message>::decode(raw.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

    fn request() -> WriteRequest {
        WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: "up".into(),
                    },
                    Label {
                        name: "job".into(),
                        value: "node".into(),
                    },
                ],
                samples: vec![
                    Sample {
                        value: 1.0,
                        timestamp: 1_700_000_000_000,
                    },
                    Sample {
                        value: f64::from_bits(STALE_NAN),
                        timestamp: 1_700_000_015_000,
                    },
                ],
            }],
        }
    }

    #[test]
    fn round_trips_bit_exact() {
        let body = encode_request(&request()).expect("encodes");
        let back = decode_request(&body, DEFAULT_MAX_DECODED_BYTES).expect("decodes");
        assert_eq!(back.timeseries[0].labels, request().timeseries[0].labels);
        let bits: Vec<_> = back.timeseries[0]
            .samples
            .iter()
            .map(|s| (s.timestamp, s.value.to_bits()))
            .collect();
        assert_eq!(
            bits,
            [
                (1_700_000_000_000, 1f64.to_bits()),
                (1_700_000_015_000, STALE_NAN)
            ]
        );
    }

    /// prompb's full shapes, with the fields this module leaves out.
    mod full {
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct WriteRequest {
            #[prost(message, repeated, tag = "1")]
            pub timeseries: Vec<TimeSeries>,
            #[prost(message, repeated, tag = "3")]
            pub metadata: Vec<MetricMetadata>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct TimeSeries {
            #[prost(message, repeated, tag = "1")]
            pub labels: Vec<super::Label>,
            #[prost(message, repeated, tag = "2")]
            pub samples: Vec<super::Sample>,
            #[prost(message, repeated, tag = "3")]
            pub exemplars: Vec<Exemplar>,
            #[prost(message, repeated, tag = "4")]
            pub histograms: Vec<Histogram>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Exemplar {
            #[prost(message, repeated, tag = "1")]
            pub labels: Vec<super::Label>,
            #[prost(double, tag = "2")]
            pub value: f64,
            #[prost(int64, tag = "3")]
            pub timestamp: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct Histogram {
            #[prost(uint64, tag = "1")]
            pub count_int: u64,
            #[prost(double, tag = "3")]
            pub sum: f64,
            #[prost(sint32, tag = "4")]
            pub schema: i32,
            #[prost(sint64, repeated, tag = "9")]
            pub negative_deltas: Vec<i64>,
            #[prost(int64, tag = "15")]
            pub timestamp: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct MetricMetadata {
            #[prost(int32, tag = "1")]
            pub r#type: i32,
            #[prost(string, tag = "2")]
            pub metric_family_name: String,
            #[prost(string, tag = "4")]
            pub help: String,
            #[prost(string, tag = "5")]
            pub unit: String,
        }
    }

    #[test]
    fn exemplars_histograms_and_metadata_are_skipped() {
        let base = request().timeseries[0].clone();
        let full = full::WriteRequest {
            timeseries: vec![full::TimeSeries {
                labels: base.labels.clone(),
                samples: base.samples.clone(),
                exemplars: vec![full::Exemplar {
                    labels: vec![Label {
                        name: "trace_id".into(),
                        value: "abc".into(),
                    }],
                    value: 2.0,
                    timestamp: 5,
                }],
                histograms: vec![full::Histogram {
                    count_int: 3,
                    sum: 1.5,
                    schema: 3,
                    negative_deltas: vec![-1, 2],
                    timestamp: 5,
                }],
            }],
            metadata: vec![full::MetricMetadata {
                r#type: 1,
                metric_family_name: "up".into(),
                help: "whether the target is up".into(),
                unit: String::new(),
            }],
        };
        let body = snappy_compress(&prost::Message::encode_to_vec(&full)).expect("compresses");
        let back = decode_request(&body, DEFAULT_MAX_DECODED_BYTES).expect("decodes");
        assert_eq!(back.timeseries.len(), 1);
        assert_eq!(back.timeseries[0].labels, base.labels);
        assert_eq!(back.timeseries[0].samples.len(), 2);
    }

    #[test]
    fn bad_bodies_are_refused_with_the_reason() {
        let raw = prost::Message::encode_to_vec(&request());
        // Not snappy at all.
        assert!(matches!(
            decode_request(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2], 1 << 20),
            Err(RemoteWriteError::Snappy(_) | RemoteWriteError::TooLarge { .. })
        ));
        // Uncompressed protobuf sent without snappy: misread as a snappy block.
        assert!(decode_request(&raw, 1 << 20).is_err());
        // Truncated snappy.
        let body = encode_request(&request()).expect("encodes");
        assert!(matches!(
            decode_request(&body[..body.len() - 3], 1 << 20),
            Err(RemoteWriteError::Snappy(_))
        ));
        // Valid snappy around bytes that are not a WriteRequest.
        let junk = snappy_compress(&[0x0a, 0xff, 0x01]).expect("compresses");
        assert!(matches!(
            decode_request(&junk, 1 << 20),
            Err(RemoteWriteError::Protobuf(_))
        ));
        // Over the limit: refused from the header, before decompressing.
        let big = snappy_compress(&vec![0u8; 4096]).expect("compresses");
        assert!(big.len() < 1024);
        assert!(matches!(
            decode_request(&big, 4095),
            Err(RemoteWriteError::TooLarge {
                len: 4096,
                max: 4095
            })
        ));
        // A header announcing 4 GiB costs nothing.
        assert!(matches!(
            decode_request(&[0xff, 0xff, 0xff, 0xff, 0x0f], DEFAULT_MAX_DECODED_BYTES),
            Err(RemoteWriteError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes, 1 << 16);
            if let Ok(body) = snappy_compress(&bytes) {
                let _ = decode_request(&body, 1 << 16);
            }
        }
    }
}

//! Messages between edge agents and core nodes.
//!
//! # Framing
//!
//! Every message travels alone on one QUIC stream (the agent opens a bidirectional stream per
//! batch, writes one frame and finishes its side; the core answers with one frame):
//!
//! ```text
//! +---------+------+----------------------------+
//! | version | kind | body (postcard, see below) |
//! |   u8    |  u8  | ..                         |
//! +---------+------+----------------------------+
//! ```
//!
//! The stream's end delimits the frame; a frame is at most [`MAX_FRAME_BYTES`].
//! `version` is [`WIRE_VERSION`]. `kind` says which message the body holds ([`Message`]).
//!
//! # Compatibility rule
//!
//! A receiver rejects a version it does not know with [`ErrorCode::BadData`] and the text
//! "unsupported wire version". New message kinds get new `kind` numbers; a change to an existing
//! body bumps [`WIRE_VERSION`], and a core accepts the previous version for one release so edge
//! fleets can be upgraded after the cores.
//!
//! # Idempotency
//!
//! A [`WriteBatch`] carries `(agent_id, epoch, sequence)`. An agent picks a new epoch whenever it
//! loses track of its sequence (a fresh buffer); within an epoch sequences only grow. The core
//! stores, in the same atomic write as the samples, the highest `(epoch, sequence)` applied per
//! agent and acknowledges a batch at or below it as a duplicate without storing it again.
//!
//! Batches that do not come from an edge agent (the core's HTTP ingest: Prometheus
//! remote_write, InfluxDB line protocol) carry [`AgentId::UNTRACKED`], the empty id: the core
//! applies every one of them and records no offset. Their senders retry whole requests, and a
//! retried sample only overwrites itself (the last write of a timestamp wins).

use crate::codec::{self, CodecError};
use crate::model::{Labels, Sample, Tenant};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Current wire format version.
pub const WIRE_VERSION: u8 = 1;
/// Largest frame either side accepts, in bytes.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// ALPN protocol id negotiated on the QUIC connection.
pub const ALPN: &[u8] = b"updraft/1";

const KIND_WRITE_BATCH: u8 = 1;
const KIND_BATCH_ACK: u8 = 2;
const KIND_RESUME_QUERY: u8 = 3;
const KIND_RESUME_POINT: u8 = 4;

/// Identity of an edge agent, stable across restarts (configured, e.g. the gateway's host name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId(pub String);

impl AgentId {
    /// The empty id: a batch without `(epoch, sequence)` tracking (see "Idempotency").
    pub const UNTRACKED: AgentId = AgentId(String::new());

    /// Whether batches from this id skip the duplicate check.
    pub fn is_untracked(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Samples of one series in arrival order (what an agent buffers before it encodes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSamples {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// One series' samples as a [`codec`] chunk: what travels in a [`WriteBatch`] and what the core
/// stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesChunk {
    pub labels: Labels,
    #[serde(with = "serde_bytes_compat")]
    pub chunk: Vec<u8>,
}

impl SeriesChunk {
    /// Sorts `samples` by timestamp, keeps the last of samples sharing a timestamp (in the
    /// given order), and encodes them.
    pub fn encode(labels: Labels, mut samples: Vec<Sample>) -> Result<Self, CodecError> {
        samples.sort_by_key(|s| s.timestamp_ms);
        // After a stable sort, the last of equal timestamps is the latest arrival: keep it.
        samples.reverse();
        samples.dedup_by_key(|s| s.timestamp_ms);
        samples.reverse();
        Ok(Self {
            labels,
            chunk: codec::encode(&samples)?,
        })
    }

    /// Samples in the chunk, from its header (checksum verified).
    pub fn sample_count(&self) -> Result<usize, CodecError> {
        Ok(codec::header(&self.chunk)?.count as usize)
    }
}

/// A batch of samples shipped by an edge agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteBatch {
    pub agent_id: AgentId,
    pub epoch: u64,
    pub sequence: u64,
    pub tenant: Tenant,
    pub series: Vec<SeriesChunk>,
}

impl WriteBatch {
    /// Samples in every chunk whose header is intact.
    pub fn sample_count(&self) -> usize {
        self.series
            .iter()
            .filter_map(|s| s.sample_count().ok())
            .sum()
    }
}

/// Byte vectors as one length-prefixed run (postcard's `bytes`), not a sequence of integers.
pub mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Stable error codes on the wire; each says whether the sender should retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request itself is wrong; sending it again cannot help.
    BadData,
    /// The receiver cannot serve now (starting, stopping, storage failed).
    Unavailable,
    /// The receiver is overloaded; retry after a pause.
    TooManyRequests,
    /// The peer is not allowed to do this.
    Unauthorized,
    /// The receiver gave up waiting.
    Timeout,
}

impl ErrorCode {
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::TooManyRequests | Self::Timeout
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadData => "bad_data",
            Self::Unavailable => "unavailable",
            Self::TooManyRequests => "too_many_requests",
            Self::Unauthorized => "unauthorized",
            Self::Timeout => "timeout",
        }
    }
}

/// The core's answer to a [`WriteBatch`], sent only after the outcome is final: for `Stored`
/// and `Duplicate`, once the samples are durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AckOutcome {
    /// Stored now. `rejected_series` were refused (limits, a damaged chunk) and will never be
    /// stored; `rejection` says why the first of them was.
    Stored {
        samples: u64,
        rejected_series: u32,
        rejection: Option<String>,
    },
    /// Already stored by an earlier delivery of the same (agent, epoch, sequence).
    Duplicate,
    /// Not stored. Retry only when `code.is_retryable()`.
    Failed { code: ErrorCode, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchAck {
    pub epoch: u64,
    pub sequence: u64,
    pub outcome: AckOutcome,
}

/// An agent asks where the core's record of its deliveries ends (after a restart, so that it
/// need not resend what the core already holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeQuery {
    pub agent_id: AgentId,
}

/// The last `(epoch, sequence)` the core applied for the agent, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    pub applied: Option<(u64, u64)>,
}

/// Every message that can travel in a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    WriteBatch(WriteBatch),
    BatchAck(BatchAck),
    ResumeQuery(ResumeQuery),
    ResumePoint(ResumePoint),
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty frame")]
    Empty,
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("frame of {0} bytes is larger than the {MAX_FRAME_BYTES} allowed")]
    TooLarge(usize),
    #[error("malformed message body: {0}")]
    Body(#[from] postcard::Error),
    #[error("{0} bytes after the end of the message body")]
    Trailing(usize),
}

/// Decodes a whole message body: bytes left after it make the frame malformed (a frame is
/// exactly one message; junk after it would be accepted and lost silently).
fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    match rest.len() {
        0 => Ok(value),
        n => Err(WireError::Trailing(n)),
    }
}

fn frame<T: Serialize>(kind: u8, body: &T) -> Vec<u8> {
    frame_sized(kind, body, 0)
}

/// As [`frame`], in a buffer with room for about `estimate` bytes from the start.
fn frame_sized<T: Serialize>(kind: u8, body: &T, estimate: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate.max(2));
    out.extend_from_slice(&[WIRE_VERSION, kind]);
    // Serialising plain structs into a Vec cannot fail: every type here is serde-derived with
    // no custom serialisers that return errors.
    postcard::to_extend(body, out).unwrap_or_default()
}

impl WriteBatch {
    /// The frame of `Message::WriteBatch(self)`, without moving the batch.
    pub fn encode_frame(&self) -> Vec<u8> {
        // Sized up front: a batch's frame is often hundreds of KiB, and growing it by doubling
        // copied it several times over (and touched fresh pages each time).
        let labels = |s: &SeriesChunk| -> usize {
            s.labels
                .iter()
                .map(|l| l.name.len() + l.value.len() + 4)
                .sum()
        };
        let estimate = 64
            + self.agent_id.0.len()
            + self.tenant.as_str().len()
            + self
                .series
                .iter()
                .map(|s| s.chunk.len() + labels(s) + 8)
                .sum::<usize>();
        frame_sized(KIND_WRITE_BATCH, self, estimate)
    }
}

impl Message {
    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::WriteBatch(b) => frame(KIND_WRITE_BATCH, b),
            Self::BatchAck(a) => frame(KIND_BATCH_ACK, a),
            Self::ResumeQuery(q) => frame(KIND_RESUME_QUERY, q),
            Self::ResumePoint(r) => frame(KIND_RESUME_POINT, r),
        }
    }

    /// Decodes one frame. Never panics; allocation is bounded by the frame's length.
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        if frame.len() > MAX_FRAME_BYTES {
            return Err(WireError::TooLarge(frame.len()));
        }
        let [version, kind, body @ ..] = frame else {
            return Err(WireError::Empty);
        };
        if *version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(*version));
        }
        match *kind {
            KIND_WRITE_BATCH => Ok(Self::WriteBatch(self::body(body)?)),
            KIND_BATCH_ACK => Ok(Self::BatchAck(self::body(body)?)),
            KIND_RESUME_QUERY => Ok(Self::ResumeQuery(self::body(body)?)),
            KIND_RESUME_POINT => Ok(Self::ResumePoint(self::body(body)?)),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Sample> {
        vec![
            Sample::new(i64::MIN, f64::from_bits(0x7ff0_0000_0000_0002)),
            Sample::new(0, -0.0),
            Sample::new(i64::MAX, f64::INFINITY),
        ]
    }

    fn batch() -> WriteBatch {
        let labels = Labels::from_metric("temp", [("site", "s1")]).expect("valid");
        WriteBatch {
            agent_id: AgentId("edge-1".into()),
            epoch: 7,
            sequence: 42,
            tenant: Tenant::default(),
            series: vec![SeriesChunk::encode(labels, samples()).expect("encodes")],
        }
    }

    #[test]
    fn write_batch_round_trips_bit_exact() {
        let m = Message::WriteBatch(batch());
        let decoded = Message::decode(&m.encode()).expect("decodes");
        assert_eq!(decoded, m);
        let Message::WriteBatch(b) = decoded else {
            unreachable!("decoded a write batch")
        };
        assert_eq!(b.sample_count(), 3);
        assert_eq!(codec::decode(&b.series[0].chunk).expect("chunk"), samples());
    }

    #[test]
    fn series_chunk_sorts_and_keeps_the_last_duplicate() {
        let labels = Labels::from_metric("m", [("a", "1")]).expect("valid");
        let c = SeriesChunk::encode(
            labels,
            vec![
                Sample::new(20, 1.0),
                Sample::new(10, 2.0),
                Sample::new(20, 3.0),
            ],
        )
        .expect("encodes");
        assert_eq!(
            codec::decode(&c.chunk).expect("decodes"),
            vec![Sample::new(10, 2.0), Sample::new(20, 3.0)]
        );
    }

    #[test]
    fn ack_round_trips() {
        let m = Message::BatchAck(BatchAck {
            epoch: 1,
            sequence: 2,
            outcome: AckOutcome::Failed {
                code: ErrorCode::TooManyRequests,
                message: "slow down".into(),
            },
        });
        assert_eq!(Message::decode(&m.encode()).expect("decodes"), m);
    }

    #[test]
    fn resume_messages_round_trip() {
        for m in [
            Message::ResumeQuery(ResumeQuery {
                agent_id: AgentId("edge-1".into()),
            }),
            Message::ResumePoint(ResumePoint {
                applied: Some((3, 4096)),
            }),
            Message::ResumePoint(ResumePoint { applied: None }),
        ] {
            assert_eq!(Message::decode(&m.encode()).expect("decodes"), m);
        }
    }

    #[test]
    fn rejects_unknown_version_and_kind() {
        let mut f = Message::WriteBatch(batch()).encode();
        f[0] = 99;
        assert!(matches!(
            Message::decode(&f),
            Err(WireError::UnsupportedVersion(99))
        ));
        f[0] = WIRE_VERSION;
        f[1] = 200;
        assert!(matches!(
            Message::decode(&f),
            Err(WireError::UnknownKind(200))
        ));
        assert!(matches!(Message::decode(&[]), Err(WireError::Empty)));
    }

    #[test]
    fn invalid_labels_in_a_frame_are_refused() {
        // Hand-build a batch whose label set bypasses validation on the sending side.
        #[derive(Serialize)]
        struct RawSeries {
            labels: Vec<crate::model::Label>,
            chunk: Vec<u8>,
        }
        #[derive(Serialize)]
        struct RawBatch {
            agent_id: AgentId,
            epoch: u64,
            sequence: u64,
            tenant: String,
            series: Vec<RawSeries>,
        }
        let raw = RawBatch {
            agent_id: AgentId("a".into()),
            epoch: 0,
            sequence: 0,
            tenant: "default".into(),
            series: vec![RawSeries {
                labels: vec![crate::model::Label::new("bad-name", "x")],
                chunk: vec![],
            }],
        };
        let mut frame = vec![WIRE_VERSION, KIND_WRITE_BATCH];
        frame.extend(postcard::to_allocvec(&raw).expect("serialises"));
        assert!(matches!(Message::decode(&frame), Err(WireError::Body(_))));
    }

    #[test]
    fn bytes_after_a_message_make_the_frame_malformed() {
        let frame = Message::ResumeQuery(ResumeQuery {
            agent_id: AgentId("edge-1".into()),
        })
        .encode();
        assert!(Message::decode(&frame).is_ok());
        let mut junk = frame.clone();
        junk.extend_from_slice(&[0, 1, 2]);
        assert!(matches!(
            Message::decode(&junk),
            Err(WireError::Trailing(3))
        ));
    }

    /// Whatever decodes re-encodes, no larger, to a frame that decodes to the same message and
    /// encodes the same again (the property `protocols/fuzz`'s `decode_wire_frame` checks).
    fn check_round_trip(frame: &[u8]) -> Result<(), TestCaseError> {
        let Ok(message) = Message::decode(frame) else {
            return Ok(());
        };
        let encoded = message.encode();
        prop_assert!(encoded.len() <= frame.len());
        let again = Message::decode(&encoded);
        prop_assert_eq!(again.as_ref().ok(), Some(&message));
        prop_assert_eq!(message.encode(), encoded.clone());
        if let Message::WriteBatch(b) = &message {
            prop_assert_eq!(b.encode_frame(), encoded);
        }
        Ok(())
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex(".{0,12}").expect("valid regex")
    }

    fn any_message() -> impl Strategy<Value = Message> {
        let series = (
            "[a-z0-9]{0,6}",
            proptest::collection::vec(any::<u8>(), 0..48),
        )
            .prop_map(|(value, chunk)| SeriesChunk {
                // An empty value is dropped: label sets of one or two labels.
                labels: Labels::from_metric("m", [("k", value)]).expect("valid"),
                chunk,
            });
        let write = (
            text(),
            any::<u64>(),
            any::<u64>(),
            "[a-zA-Z0-9_-]{1,16}",
            proptest::collection::vec(series, 0..4),
        )
            .prop_map(|(agent, epoch, sequence, tenant, series)| {
                Message::WriteBatch(WriteBatch {
                    agent_id: AgentId(agent),
                    epoch,
                    sequence,
                    tenant: Tenant::new(tenant).expect("valid"),
                    series,
                })
            });
        let code = prop::sample::select(vec![
            ErrorCode::BadData,
            ErrorCode::Unavailable,
            ErrorCode::TooManyRequests,
            ErrorCode::Unauthorized,
            ErrorCode::Timeout,
        ]);
        let outcome = prop_oneof![
            (any::<u64>(), any::<u32>(), proptest::option::of(text())).prop_map(
                |(samples, rejected_series, rejection)| AckOutcome::Stored {
                    samples,
                    rejected_series,
                    rejection,
                }
            ),
            Just(AckOutcome::Duplicate),
            (code, text()).prop_map(|(code, message)| AckOutcome::Failed { code, message }),
        ];
        let ack = (any::<u64>(), any::<u64>(), outcome).prop_map(|(epoch, sequence, outcome)| {
            Message::BatchAck(BatchAck {
                epoch,
                sequence,
                outcome,
            })
        });
        prop_oneof![
            write,
            ack,
            text().prop_map(|a| Message::ResumeQuery(ResumeQuery {
                agent_id: AgentId(a)
            })),
            proptest::option::of((any::<u64>(), any::<u64>()))
                .prop_map(|applied| Message::ResumePoint(ResumePoint { applied })),
        ]
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            check_round_trip(&bytes)?;
        }

        #[test]
        fn arbitrary_bodies_of_every_kind_never_panic_and_round_trip(
            // The known kinds and one past them.
            kind in 1u8..=5,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut frame = vec![WIRE_VERSION, kind];
            frame.extend_from_slice(&body);
            check_round_trip(&frame)?;
        }

        #[test]
        fn decoding_mutated_frames_never_panics(pos in 0usize..200, byte in any::<u8>()) {
            let mut f = Message::WriteBatch(batch()).encode();
            let i = pos % f.len();
            f[i] = byte;
            check_round_trip(&f)?;
        }

        #[test]
        fn messages_of_every_kind_round_trip(m in any_message()) {
            let frame = m.encode();
            prop_assert_eq!(Message::decode(&frame).ok(), Some(m));
            check_round_trip(&frame)?;
        }
    }
}

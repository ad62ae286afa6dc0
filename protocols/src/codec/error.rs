//! Errors of the chunk codec.

use super::{TsEncoding, ValueEncoding};

/// Why a chunk could not be encoded or decoded.
///
/// Every variant is cheap to build (no allocation): decoders return them on the hot path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// `encode` was given no samples; an empty chunk is never stored.
    #[error("cannot encode an empty chunk")]
    Empty,
    /// More samples than one chunk may hold.
    #[error("{count} samples exceed the chunk limit of {max}")]
    TooManySamples { count: usize, max: usize },
    /// Timestamps must be strictly ascending; `index` is the first sample that is not.
    #[error("timestamps not strictly ascending at sample {index}")]
    Unsorted { index: usize },
    /// A forced encoding cannot represent these samples.
    #[error("value encoding {0:?} cannot represent these samples")]
    ValueEncodingNotApplicable(ValueEncoding),
    /// A forced encoding cannot represent these samples.
    #[error("timestamp encoding {0:?} cannot represent these samples")]
    TsEncodingNotApplicable(TsEncoding),
    /// The chunk ends before the named part is complete.
    #[error("chunk truncated in {what}")]
    Truncated { what: &'static str },
    /// The stored CRC32C does not match the bytes.
    #[error("chunk checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    /// A format version this decoder does not know (newer than [`super::FORMAT_VERSION`]).
    #[error("unsupported chunk format version {version} (this decoder reads up to {max})")]
    UnsupportedVersion { version: u8, max: u8 },
    /// An encoding id this version of the format does not define.
    #[error("unknown {what} encoding id {id}")]
    UnknownEncoding { what: &'static str, id: u8 },
    /// The bytes pass the checksum but break an invariant of the format.
    #[error("corrupt chunk: {what}")]
    Corrupt { what: &'static str },
}

impl CodecError {
    pub(crate) const fn truncated(what: &'static str) -> Self {
        Self::Truncated { what }
    }

    pub(crate) const fn corrupt(what: &'static str) -> Self {
        Self::Corrupt { what }
    }
}

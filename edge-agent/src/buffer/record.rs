//! The payload of one buffer record: a tenant and the samples of one or more series.
//!
//! ```text
//! u8   version (= 1)
//! u16  tenant length, then the tenant (UTF-8)
//! u32  series count, then per series:
//!      u16 label count, then per label: u16 name length, name, u16 value length, value
//!      u32 sample count, then per sample: i64 timestamp_ms, u64 f64 bits
//! ```
//!
//! All integers little-endian. Labels are written in their canonical order and validated again
//! when read (a record is data from disk, not trusted). Sample values keep their exact bits, so
//! NaN payloads such as Prometheus' stale marker survive.
//!
//! Compatibility: a new payload layout gets a new version byte, and this module keeps decoding
//! every older version for as long as an upgraded agent may find such records in its buffer.

use protocols::model::{Label, Labels, ModelError, Sample, Tenant};
use protocols::wire::SeriesSamples;

const VERSION: u8 = 1;
/// Smallest possible encoding of one label and one sample, to bound counts before allocating.
const MIN_LABEL_BYTES: usize = 4;
const SAMPLE_BYTES: usize = 16;

/// A decoded record payload.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBody {
    pub tenant: Tenant,
    pub series: Vec<SeriesSamples>,
}

impl RecordBody {
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record payload ends early at byte {0}")]
    Truncated(usize),
    #[error("unknown record payload version {0}")]
    UnsupportedVersion(u8),
    #[error("record text is not UTF-8 at byte {0}")]
    NotUtf8(usize),
    #[error("record holds an invalid series or tenant: {0}")]
    Invalid(#[from] ModelError),
    #[error("{0} bytes of trailing garbage after the record payload")]
    TrailingBytes(usize),
    #[error("too many {0} for one record")]
    TooMany(&'static str),
}

/// Encodes a record. Fails only for counts beyond the format's integer widths, which the
/// ingest path never produces (it caps records far below).
pub fn encode(tenant: &Tenant, series: &[SeriesSamples]) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::with_capacity(64 + series.len() * 64);
    out.push(VERSION);
    put_str(&mut out, tenant.as_str())?;
    put_len_u32(&mut out, series.len(), "series")?;
    for s in series {
        let labels = s.labels.as_slice();
        let n = u16::try_from(labels.len()).map_err(|_| RecordError::TooMany("labels"))?;
        out.extend_from_slice(&n.to_le_bytes());
        for l in labels {
            put_str(&mut out, &l.name)?;
            put_str(&mut out, &l.value)?;
        }
        put_len_u32(&mut out, s.samples.len(), "samples")?;
        for sample in &s.samples {
            out.extend_from_slice(&sample.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&sample.value.to_bits().to_le_bytes());
        }
    }
    Ok(out)
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), RecordError> {
    // The model bounds names, values and tenants far below u16::MAX; checked anyway.
    let len = u16::try_from(s.len()).map_err(|_| RecordError::TooMany("bytes in a string"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_len_u32(out: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), RecordError> {
    let n = u32::try_from(len).map_err(|_| RecordError::TooMany(what))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

/// Decodes a record payload. Never panics; allocations are bounded by the input length.
pub fn decode(bytes: &[u8]) -> Result<RecordBody, RecordError> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(RecordError::UnsupportedVersion(version));
    }
    let tenant = Tenant::new(r.str()?)?;
    let series_count = r.count_u32(MIN_LABEL_BYTES + 6)?;
    let mut series = Vec::with_capacity(series_count);
    for _ in 0..series_count {
        let label_count = usize::from(r.u16()?);
        r.check_room(label_count, MIN_LABEL_BYTES)?;
        let mut labels = Vec::with_capacity(label_count);
        for _ in 0..label_count {
            let name = r.str()?;
            let value = r.str()?;
            labels.push(Label::new(name, value));
        }
        let labels = Labels::try_from(labels)?;
        let sample_count = r.count_u32(SAMPLE_BYTES)?;
        let mut samples = Vec::with_capacity(sample_count);
        for _ in 0..sample_count {
            let ts = i64::from_le_bytes(r.array()?);
            let bits = u64::from_le_bytes(r.array()?);
            samples.push(Sample::new(ts, f64::from_bits(bits)));
        }
        series.push(SeriesSamples { labels, samples });
    }
    if r.pos != bytes.len() {
        return Err(RecordError::TrailingBytes(bytes.len() - r.pos));
    }
    Ok(RecordBody { tenant, series })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(RecordError::Truncated(self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        self.array().map(u16::from_le_bytes)
    }

    fn str(&mut self) -> Result<String, RecordError> {
        let at = self.pos;
        let len = usize::from(self.u16()?);
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| RecordError::NotUtf8(at))
    }

    /// A u32 count of items at least `min_item_bytes` each, refused if the rest cannot hold it.
    fn count_u32(&mut self, min_item_bytes: usize) -> Result<usize, RecordError> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        self.check_room(n, min_item_bytes)?;
        Ok(n)
    }

    fn check_room(&self, n: usize, min_item_bytes: usize) -> Result<(), RecordError> {
        let remaining = self.bytes.len() - self.pos;
        if n.saturating_mul(min_item_bytes) > remaining {
            return Err(RecordError::Truncated(self.pos));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> RecordBody {
        RecordBody {
            tenant: Tenant::new("acme").expect("valid"),
            series: vec![
                SeriesSamples {
                    labels: Labels::from_metric("temp", [("site", "s1"), ("device", "d1")])
                        .expect("valid"),
                    samples: vec![
                        Sample::new(1, 21.5),
                        Sample::new(-5, f64::from_bits(0x7ff0_0000_0000_0002)),
                        Sample::new(i64::MAX, -0.0),
                    ],
                },
                SeriesSamples {
                    labels: Labels::from_metric("up", [("a", "ü")]).expect("valid"),
                    samples: vec![Sample::new(2, 1.0)],
                },
            ],
        }
    }

    #[test]
    fn round_trips_bit_exact() {
        let b = body();
        let bytes = encode(&b.tenant, &b.series).expect("encodes");
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back, b);
        assert_eq!(back.sample_count(), 4);
    }

    #[test]
    fn decoding_damaged_bytes_fails_without_panicking() {
        let b = body();
        let bytes = encode(&b.tenant, &b.series).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(decode(&extra), Err(RecordError::TrailingBytes(1))));
        // Flip every bit once: decoding may succeed or fail, but must not panic.
        for i in 0..bytes.len() * 8 {
            let mut m = bytes.clone();
            m[i / 8] ^= 1 << (i % 8);
            let _ = decode(&m);
        }
        let mut huge_count = vec![VERSION, 1, 0, b'a'];
        huge_count.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&huge_count),
            Err(RecordError::Truncated(_))
        ));
    }
}

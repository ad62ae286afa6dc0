//! Key encodings. All integers are big-endian so that byte order equals numeric order.
//!
//! Strings are separated by `0xFF`, a byte that never occurs in UTF-8, so the encodings are
//! unambiguous without length prefixes and every prefix below is a clean range.

use protocols::SeriesId;

/// Separator between strings in a key (never part of UTF-8 text).
pub const SEP: u8 = 0xFF;

/// `samples` key: series id, then the timestamp with its sign bit flipped so negative
/// timestamps sort before positive ones.
pub fn sample_key(series: SeriesId, timestamp_ms: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&series.0.to_be_bytes());
    k[8..].copy_from_slice(&ts_to_bytes(timestamp_ms));
    k
}

pub fn ts_to_bytes(timestamp_ms: i64) -> [u8; 8] {
    ((timestamp_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`sample_key`]; `None` for a key of the wrong length.
pub fn decode_sample_key(key: &[u8]) -> Option<(SeriesId, i64)> {
    let id: [u8; 8] = key.get(..8)?.try_into().ok()?;
    let ts: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    (key.len() == 16).then(|| {
        (
            SeriesId(u64::from_be_bytes(id)),
            (u64::from_be_bytes(ts) ^ (1 << 63)) as i64,
        )
    })
}

/// `series` key: the series id.
pub fn series_key(series: SeriesId) -> [u8; 8] {
    series.0.to_be_bytes()
}

/// `postings` key prefix for one tenant: `tenant 0xFF`.
pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(SEP);
    k
}

/// `postings` key prefix for one label name: `tenant 0xFF name 0xFF`.
pub fn name_prefix(tenant: &str, name: &str) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.extend_from_slice(name.as_bytes());
    k.push(SEP);
    k
}

/// `postings` key prefix for one label pair: `tenant 0xFF name 0xFF value 0xFF`.
pub fn pair_prefix(tenant: &str, name: &str, value: &str) -> Vec<u8> {
    let mut k = name_prefix(tenant, name);
    k.extend_from_slice(value.as_bytes());
    k.push(SEP);
    k
}

/// `postings` key: `tenant 0xFF name 0xFF value 0xFF series_id`.
pub fn posting_key(tenant: &str, name: &str, value: &str, series: SeriesId) -> Vec<u8> {
    let mut k = pair_prefix(tenant, name, value);
    k.extend_from_slice(&series.0.to_be_bytes());
    k
}

/// Splits the part of a posting key after a prefix into the next string and the rest.
pub fn split_field(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = rest.iter().position(|b| *b == SEP)?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// The series id at the end of a posting key.
pub fn posting_series(key: &[u8]) -> Option<SeriesId> {
    let start = key.len().checked_sub(8)?;
    let id: [u8; 8] = key.get(start..)?.try_into().ok()?;
    Some(SeriesId(u64::from_be_bytes(id)))
}

/// The smallest key greater than every key that starts with `prefix ++ field ++ 0xFF`,
/// followed by at most 8 bytes: used to skip to the next distinct field value.
pub fn skip_past(prefix_and_field: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix_and_field.len() + 10);
    k.extend_from_slice(prefix_and_field);
    k.extend_from_slice(&[SEP; 10]);
    k
}

/// `meta` key holding an agent's last applied (epoch, sequence).
pub fn agent_offset_key(agent: &str) -> Vec<u8> {
    let mut k = b"agent-offset".to_vec();
    k.push(SEP);
    k.extend_from_slice(agent.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_keys_sort_by_series_then_time() {
        let s = SeriesId(7);
        let mut ts = [i64::MIN, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let keys: Vec<_> = ts.iter().map(|t| sample_key(s, *t)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (k, t) in keys.iter().zip(ts.iter_mut()) {
            assert_eq!(decode_sample_key(k), Some((s, *t)));
        }
        assert!(sample_key(SeriesId(7), i64::MAX) < sample_key(SeriesId(8), i64::MIN));
        assert_eq!(decode_sample_key(&[0; 15]), None);
    }

    #[test]
    fn posting_keys_round_trip() {
        let k = posting_key("t", "host", "a", SeriesId(u64::MAX));
        let rest = &k[name_prefix("t", "host").len()..];
        let (value, id) = split_field(rest).expect("value");
        assert_eq!(value, b"a");
        assert_eq!(id.len(), 8);
        assert_eq!(posting_series(&k), Some(SeriesId(u64::MAX)));
        assert!(skip_past(&pair_prefix("t", "host", "a")[..]) > k);
    }
}

//! Key encodings. All integers are big-endian so that byte order equals numeric order.
//!
//! Strings are separated by `0xFF`, a byte that never occurs in UTF-8, so the encodings are
//! unambiguous without length prefixes and every prefix below is a clean range.

use protocols::SeriesId;

/// Separator between strings in a key (never part of UTF-8 text).
pub const SEP: u8 = 0xFF;

/// Length of a UTC day in milliseconds: chunks never span two days, so a day's chunks of a
/// series are one key range and merge into one sealed block.
pub const DAY_MS: i64 = 86_400_000;

/// First millisecond of the UTC day holding `timestamp_ms`.
pub fn day_start(timestamp_ms: i64) -> i64 {
    // Saturating: the day holding i64::MIN starts "before" i64::MIN; clamping keeps it a lower
    // bound of every timestamp in that day.
    timestamp_ms.div_euclid(DAY_MS).saturating_mul(DAY_MS)
}

/// Last millisecond of the UTC day holding `timestamp_ms`.
pub fn day_end(timestamp_ms: i64) -> i64 {
    // The next day's start overflows only for the last day, which ends at i64::MAX.
    (timestamp_ms.div_euclid(DAY_MS) + 1)
        .checked_mul(DAY_MS)
        .map_or(i64::MAX, |next| next - 1)
}

/// `chunks` key: series id, the chunk's first timestamp (sign bit flipped so negative
/// timestamps sort first), and the write sequence that orders overlapping chunks (the higher
/// one wins a shared timestamp).
pub fn chunk_key(series: SeriesId, min_ts: i64, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&series.0.to_be_bytes());
    k[8..16].copy_from_slice(&ts_to_bytes(min_ts));
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn ts_to_bytes(timestamp_ms: i64) -> [u8; 8] {
    ((timestamp_ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn u64_at(key: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = key.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Inverse of [`chunk_key`]: `(series, min_ts, seq)`; `None` for a key of the wrong length.
pub fn decode_chunk_key(key: &[u8]) -> Option<(SeriesId, i64, u64)> {
    if key.len() != 24 {
        return None;
    }
    Some((
        SeriesId(u64_at(key, 0)?),
        (u64_at(key, 8)? ^ (1 << 63)) as i64,
        u64_at(key, 16)?,
    ))
}

/// `dirty` key: a (series, day) with chunks written since its last merge.
pub fn dirty_key(series: SeriesId, day_start: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&series.0.to_be_bytes());
    k[8..].copy_from_slice(&ts_to_bytes(day_start));
    k
}

/// Inverse of [`dirty_key`].
pub fn decode_dirty_key(key: &[u8]) -> Option<(SeriesId, i64)> {
    if key.len() != 16 {
        return None;
    }
    Some((
        SeriesId(u64_at(key, 0)?),
        (u64_at(key, 8)? ^ (1 << 63)) as i64,
    ))
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

/// `meta` key holding when [`super::Storage::flush`] last ran (ms since the epoch, big-endian).
pub const LAST_FLUSH_KEY: &[u8] = b"last-flush";

/// `meta` key holding an agent's last applied (epoch, sequence).
pub fn agent_offset_key(agent: &str) -> Vec<u8> {
    let mut k = b"agent-offset".to_vec();
    k.push(SEP);
    k.extend_from_slice(agent.as_bytes());
    k
}

/// `meta` key holding an agent's last applied (epoch, sequence) in shard group `group` (a
/// cluster's groups keep their agents' offsets apart: each applies its part of a batch once).
pub fn group_offset_key(group: u64, agent: &str) -> Vec<u8> {
    let mut k = group_offset_prefix(group);
    k.extend_from_slice(agent.as_bytes());
    k
}

/// The prefix of every [`group_offset_key`] of `group`.
pub fn group_offset_prefix(group: u64) -> Vec<u8> {
    let mut k = GROUP_OFFSETS.to_vec();
    k.extend_from_slice(&group.to_be_bytes());
    k.push(SEP);
    k
}

/// The prefix of every [`group_offset_key`].
pub const GROUP_OFFSETS: &[u8] = b"group-offset\xFF";

/// `meta` key holding the applied position of shard group `group` (opaque to storage: the
/// cluster's encoding of a Raft log id and membership), written with the head flush that
/// holds everything up to it.
pub fn group_applied_key(group: u64) -> Vec<u8> {
    let mut k = b"group-applied".to_vec();
    k.push(SEP);
    k.extend_from_slice(&group.to_be_bytes());
    k
}

/// Splits a [`group_offset_key`] into its group and agent.
pub fn decode_group_offset_key(key: &[u8]) -> Option<(u64, String)> {
    let rest = key.strip_prefix(GROUP_OFFSETS)?;
    let group = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let agent = rest.get(8..)?.strip_prefix(&[SEP])?;
    Some((group, String::from_utf8_lossy(agent).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_sort_by_series_then_time_then_sequence() {
        let s = SeriesId(7);
        let ts = [i64::MIN, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let keys: Vec<_> = ts.iter().map(|t| chunk_key(s, *t, 5)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (k, t) in keys.iter().zip(ts) {
            assert_eq!(decode_chunk_key(k), Some((s, t, 5)));
        }
        assert!(chunk_key(s, 0, 1) < chunk_key(s, 0, 2));
        assert!(chunk_key(SeriesId(7), i64::MAX, u64::MAX) < chunk_key(SeriesId(8), i64::MIN, 0));
        assert_eq!(decode_chunk_key(&[0; 23]), None);
        assert_eq!(decode_dirty_key(&dirty_key(s, -DAY_MS)), Some((s, -DAY_MS)));
    }

    #[test]
    fn days_are_utc_and_total() {
        assert_eq!(day_start(0), 0);
        assert_eq!(day_end(0), DAY_MS - 1);
        assert_eq!(day_start(-1), -DAY_MS);
        assert_eq!(day_start(DAY_MS + 5), DAY_MS);
        assert_eq!(
            day_start(i64::MIN),
            i64::MIN,
            "clamped: the true start is below i64::MIN"
        );
        assert_eq!(day_end(i64::MAX), i64::MAX);
        assert_eq!(day_start(i64::MAX), (i64::MAX / DAY_MS) * DAY_MS);
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

//! A checksum of each shard's logical content: what two stores that applied the same log must
//! agree on, whatever their settings, clocks, head flushes and compactions.
//!
//! Per shard (the top bits of the series id, [`protocols::model::SHARD_COUNT`] of them), in
//! series id order: the series id, its tenant, its labels, then every sample as the read path
//! returns it (merged from the head and every chunk, the last write winning a shared
//! timestamp), as timestamp and value bits. xxh3 (64 bits) over those fields, each length
//! prefixed, so that no two different contents hash the same input.
//!
//! It deliberately leaves out the physical layout, which replicas do not share: chunk
//! boundaries and write sequences (head flushes are local), compaction's merges, and the
//! nonces of encrypted values. Postings are derived from the series entries.

use super::{Storage, StorageError};
use protocols::model::SHARD_COUNT;

use query::DataSource;
use xxhash_rust::xxh3::Xxh3;

/// One shard's content summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardChecksum {
    pub series: u64,
    pub samples: u64,
    pub hash: u64,
}

impl Storage {
    /// The checksum of every shard, indexed by shard number. Reads every sample: for tests,
    /// benchmarks and replica comparison, not for a hot path.
    pub fn shard_checksums(&self) -> Result<Vec<ShardChecksum>, StorageError> {
        let mut out = vec![ShardChecksum::default(); SHARD_COUNT as usize];
        let mut hashers: Vec<Xxh3> = (0..SHARD_COUNT).map(|_| Xxh3::new()).collect();
        // Keys are series ids, big-endian: the scan goes shard by shard, id by id.
        for kv in self.ks.series.iter() {
            let (key, value) = kv.into_inner()?;
            let (id, tenant, labels) = self.ks.series_entry(&key, &value)?;
            let samples = self
                .samples_of(&tenant, id, i64::MIN, i64::MAX)
                .map_err(|e| StorageError::Corrupt {
                    keyspace: "chunks",
                    detail: e.to_string(),
                })?;
            let shard = usize::from(id.shard().0);
            let h = &mut hashers[shard];
            h.update(&id.0.to_be_bytes());
            put(h, tenant.as_str().as_bytes());
            h.update(&(labels.len() as u64).to_le_bytes());
            for l in labels.iter() {
                put(h, l.name.as_bytes());
                put(h, l.value.as_bytes());
            }
            h.update(&(samples.len() as u64).to_le_bytes());
            for s in &samples {
                h.update(&s.timestamp_ms.to_le_bytes());
                h.update(&s.value.to_bits().to_le_bytes());
            }
            out[shard].series += 1;
            out[shard].samples += samples.len() as u64;
        }
        for (sum, h) in out.iter_mut().zip(hashers) {
            sum.hash = h.digest();
        }
        Ok(out)
    }
}

fn put(h: &mut Xxh3, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

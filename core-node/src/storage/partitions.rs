//! Time partitions: one fjall keyspace of chunks per tenant and [`PARTITION_MS`] of time, so
//! that retention removes a tenant's old data by dropping whole keyspaces, without tombstones.
//!
//! A partition's keyspace is named `chunks~<tenant>~<index>`, where the index is the
//! partition's start time divided by [`PARTITION_MS`] (negative before 1970). Chunks never
//! span two UTC days and partitions are whole days, so every chunk lies in one partition.

use super::{StorageError, keys};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use protocols::Tenant;
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

/// Length of a partition: a week, as InfluxDB's default shard group for long retention. Data
/// outlives its retention by up to one partition.
pub const PARTITION_MS: i64 = 7 * keys::DAY_MS;

/// The partition index holding `timestamp_ms`.
pub fn index_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(PARTITION_MS)
}

/// The first millisecond of partition `index`.
pub fn start_of(index: i64) -> i64 {
    index.saturating_mul(PARTITION_MS)
}

/// The last millisecond of partition `index`.
pub fn end_of(index: i64) -> i64 {
    (index + 1)
        .checked_mul(PARTITION_MS)
        .map_or(i64::MAX, |next| next - 1)
}

fn name(tenant: &Tenant, index: i64) -> String {
    format!("chunks~{tenant}~{index}")
}

fn parse_name(name: &str) -> Option<(Tenant, i64)> {
    let rest = name.strip_prefix("chunks~")?;
    let (tenant, index) = rest.rsplit_once('~')?;
    Some((Tenant::new(tenant).ok()?, index.parse().ok()?))
}

/// The open partitions of every tenant.
pub(crate) struct Partitions {
    db: Database,
    map: RwLock<BTreeMap<(Tenant, i64), Keyspace>>,
}

impl Partitions {
    pub fn open(db: &Database) -> Result<Self, StorageError> {
        let mut map = BTreeMap::new();
        for name in db.list_keyspace_names() {
            if let Some(key) = parse_name(&name) {
                let ks = db.keyspace(&name, KeyspaceCreateOptions::default)?;
                map.insert(key, ks);
            }
        }
        metrics::gauge!("updraft_core_partitions").set(map.len() as f64);
        Ok(Self {
            db: db.clone(),
            map: RwLock::new(map),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<(Tenant, i64), Keyspace>> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts
        // and removes), so a poisoned lock is still consistent.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, tenant: &Tenant, index: i64) -> Option<Keyspace> {
        self.read().get(&(tenant.clone(), index)).cloned()
    }

    /// The partition, created if it does not exist yet (only the writer creates).
    pub fn get_or_create(&self, tenant: &Tenant, index: i64) -> Result<Keyspace, StorageError> {
        if let Some(ks) = self.get(tenant, index) {
            return Ok(ks);
        }
        let ks = self
            .db
            .keyspace(&name(tenant, index), KeyspaceCreateOptions::default)?;
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.insert((tenant.clone(), index), ks.clone());
        metrics::gauge!("updraft_core_partitions").set(map.len() as f64);
        Ok(ks)
    }

    /// The existing partitions of `tenant` that overlap `[from_ms, to_ms]`, oldest first.
    pub fn overlapping(&self, tenant: &Tenant, from_ms: i64, to_ms: i64) -> Vec<Keyspace> {
        let (first, last) = (index_of(from_ms), index_of(to_ms));
        self.read()
            .range((tenant.clone(), first)..=(tenant.clone(), last))
            .map(|(_, ks)| ks.clone())
            .collect()
    }

    /// Every partition, for retention and accounting.
    pub fn all(&self) -> Vec<(Tenant, i64)> {
        self.read().keys().cloned().collect()
    }

    /// Drops a partition and everything in it (only the writer drops).
    pub fn drop_partition(&self, tenant: &Tenant, index: i64) -> Result<(), StorageError> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(ks) = map.remove(&(tenant.clone(), index)) {
            self.db.delete_keyspace(ks)?;
        }
        metrics::gauge!("updraft_core_partitions").set(map.len() as f64);
        Ok(())
    }
}

/// How long each tenant's data is kept. `None` keeps it forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    pub default: Option<Duration>,
    pub per_tenant: BTreeMap<Tenant, Option<Duration>>,
}

impl Retention {
    pub fn of(&self, tenant: &Tenant) -> Option<Duration> {
        self.per_tenant.get(tenant).copied().unwrap_or(self.default)
    }

    /// The oldest timestamp `tenant` keeps at `now_ms`; `None` keeps everything.
    pub fn cutoff(&self, tenant: &Tenant, now_ms: i64) -> Option<i64> {
        let keep = self.of(tenant)?;
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        Some(now_ms.saturating_sub(keep_ms))
    }
}

/// Parses a retention: `forever`, or a number with a unit `s`, `m`, `h`, `d`, `w` or `y`
/// (365 days), e.g. `90d`.
pub fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid retention {text:?}: expected e.g. 90d, 12h or forever"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => {
            return Err(format!(
                "invalid retention unit in {text:?}: use s, m, h, d, w, y or forever"
            ));
        }
    };
    if n == 0 {
        return Err(format!(
            "retention {text:?} would keep nothing; use forever or more"
        ));
    }
    Ok(Some(Duration::from_secs(n.saturating_mul(secs))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indices_round_trip() {
        let t = Tenant::new("acme-1").expect("tenant");
        for index in [i64::MIN / PARTITION_MS, -1, 0, 2_800] {
            assert_eq!(parse_name(&name(&t, index)), Some((t.clone(), index)));
        }
        assert_eq!(index_of(-1), -1);
        assert_eq!(index_of(PARTITION_MS), 1);
        assert_eq!(end_of(0), PARTITION_MS - 1);
        assert_eq!(end_of(index_of(i64::MAX)), i64::MAX);
        assert_eq!(parse_name("chunks"), None);
    }

    #[test]
    fn retention_parses_and_applies_per_tenant() {
        assert_eq!(parse_retention("forever"), Ok(None));
        assert_eq!(
            parse_retention("90d"),
            Ok(Some(Duration::from_secs(90 * 86_400)))
        );
        assert_eq!(
            parse_retention("12h"),
            Ok(Some(Duration::from_secs(12 * 3_600)))
        );
        assert!(parse_retention("0d").is_err());
        assert!(parse_retention("ninety").is_err());
        assert!(parse_retention("5x").is_err());
        let acme = Tenant::new("acme").expect("tenant");
        let r = Retention {
            default: Some(Duration::from_secs(10)),
            per_tenant: [(acme.clone(), None)].into(),
        };
        assert_eq!(r.cutoff(&Tenant::default(), 60_000), Some(50_000));
        assert_eq!(r.cutoff(&acme, 60_000), None);
    }
}

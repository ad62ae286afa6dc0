//! The head: acknowledged samples that are in the WAL but not yet in fjall.
//!
//! A remote_write request or a small agent batch carries a few samples per series. Writing
//! each as a chunk of its own made the writer's cost one memtable insert per series per
//! request, and left the compactor to merge thousands of tiny chunks. Instead the writer
//! appends samples to the head, an in-memory, per-series, time-ordered buffer; the WAL stays
//! their durable copy. The writer cuts the whole head into chunks in one fjall batch (a *head
//! flush*) when it holds `head_max_samples` samples, when the oldest unflushed write is
//! `head_max_age` old, on a checkpoint request and on shutdown. That batch also records how
//! far into the WAL fjall now holds everything, so the WAL is only released up to the last
//! head flush, and a restart replays the rest into the head again (see [`super::writer`]).
//!
//! Readers see the head and fjall together: they read the head first, then fjall, so a
//! concurrent flush (commit to fjall, then clear the head) can show a sample twice, never
//! zero times; duplicates merge by timestamp. For a shared timestamp the head wins, since
//! everything in it was written after every chunk of the series in fjall.
//!
//! The head is sharded by series id behind read-write locks: the writer is the only one that
//! changes it, and readers only copy the part of one series they need.

use foldhash::{HashMap, HashMapExt};
use protocols::{Sample, SeriesId, Tenant};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

const SHARDS: usize = 64;

/// One series' unflushed samples: ascending, one per timestamp (the last write wins).
pub(crate) struct HeadSeries {
    pub tenant: Tenant,
    pub samples: Vec<Sample>,
}

type Shard = HashMap<SeriesId, HeadSeries>;

pub(crate) struct Head {
    shards: Box<[RwLock<Shard>]>,
    samples: AtomicUsize,
    /// Last applied (epoch, sequence) per agent, including batches only the head holds:
    /// what an agent resumes from. fjall's `agent-offset` keys lag until the next flush.
    offsets: Mutex<HashMap<String, (u64, u64)>>,
}

/// A poisoned lock only means a thread panicked while holding it; the data is still whole
/// (every mutation below completes or leaves the map as it was).
fn read(shard: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(|p| p.into_inner())
}

fn write(shard: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    shard.write().unwrap_or_else(|p| p.into_inner())
}

impl Head {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            samples: AtomicUsize::new(0),
            offsets: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, id: SeriesId) -> &RwLock<Shard> {
        // Series ids are hashes; their low bits spread evenly.
        &self.shards[(id.0 as usize) % SHARDS]
    }

    /// Samples held, over every series.
    pub fn len(&self) -> usize {
        self.samples.load(Ordering::Relaxed)
    }

    pub fn contains(&self, id: SeriesId) -> bool {
        read(self.shard(id)).contains_key(&id)
    }

    /// Adds `new` (ascending, unique timestamps) to series `id`; where a timestamp is already
    /// held, the new value wins.
    pub fn append(&self, id: SeriesId, tenant: &Tenant, new: Vec<Sample>) {
        if new.is_empty() {
            return;
        }
        let mut shard = write(self.shard(id));
        let before;
        let after;
        match shard.get_mut(&id) {
            None => {
                before = 0;
                after = new.len();
                shard.insert(
                    id,
                    HeadSeries {
                        tenant: tenant.clone(),
                        samples: new,
                    },
                );
            }
            Some(series) => {
                before = series.samples.len();
                merge_into(&mut series.samples, new);
                after = series.samples.len();
            }
        }
        self.samples.fetch_add(after - before, Ordering::Relaxed);
    }

    /// Whether `id`, a series of `tenant`, holds a sample with `start_ms <= timestamp <=
    /// end_ms` (without copying).
    pub fn any_in(&self, id: SeriesId, tenant: &Tenant, start_ms: i64, end_ms: i64) -> bool {
        let shard = read(self.shard(id));
        let Some(series) = shard.get(&id).filter(|s| &s.tenant == tenant) else {
            return false;
        };
        let s = &series.samples;
        let from = s.partition_point(|x| x.timestamp_ms < start_ms);
        s.get(from).is_some_and(|x| x.timestamp_ms <= end_ms)
    }

    /// The samples of `id` with `start_ms <= timestamp <= end_ms`.
    pub fn range(&self, id: SeriesId, start_ms: i64, end_ms: i64) -> Vec<Sample> {
        let shard = read(self.shard(id));
        let Some(series) = shard.get(&id) else {
            return Vec::new();
        };
        let s = &series.samples;
        let from = s.partition_point(|x| x.timestamp_ms < start_ms);
        let to = s.partition_point(|x| x.timestamp_ms <= end_ms);
        s.get(from..to).map(<[Sample]>::to_vec).unwrap_or_default()
    }

    /// Calls `f` with every series, one shard locked for reading at a time. Readers go on
    /// meanwhile; only the writer changes the head, so nothing changes under `f`.
    pub fn try_for_each<E>(
        &self,
        mut f: impl FnMut(SeriesId, &HeadSeries) -> Result<(), E>,
    ) -> Result<(), E> {
        for shard in self.shards.iter() {
            for (id, series) in read(shard).iter() {
                f(*id, series)?;
            }
        }
        Ok(())
    }

    /// Removes every sample of `tenant`'s series with `start_ms <= timestamp <= end_ms` (a
    /// retention drop of that time range); returns how many went.
    pub fn remove_range(&self, tenant: &Tenant, start_ms: i64, end_ms: i64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = write(shard);
            shard.retain(|_, series| {
                if &series.tenant != tenant {
                    return true;
                }
                let before = series.samples.len();
                series
                    .samples
                    .retain(|s| !(start_ms..=end_ms).contains(&s.timestamp_ms));
                removed += before - series.samples.len();
                !series.samples.is_empty()
            });
        }
        self.samples.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Removes series `id` (its shard group's data is being replaced); returns how many
    /// samples went.
    pub fn remove_series(&self, id: SeriesId) -> usize {
        let removed = write(self.shard(id))
            .remove(&id)
            .map_or(0, |s| s.samples.len());
        self.samples.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// As [`Head::remove_range`], for the series `selected` accepts only.
    pub fn remove_range_where(
        &self,
        tenant: &Tenant,
        start_ms: i64,
        end_ms: i64,
        selected: impl Fn(SeriesId) -> bool,
    ) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = write(shard);
            shard.retain(|id, series| {
                if &series.tenant != tenant || !selected(*id) {
                    return true;
                }
                let before = series.samples.len();
                series
                    .samples
                    .retain(|s| !(start_ms..=end_ms).contains(&s.timestamp_ms));
                removed += before - series.samples.len();
                !series.samples.is_empty()
            });
        }
        self.samples.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Empties the head after a flush committed everything it held.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            // A fresh map: the old one's capacity was sized for the last burst.
            *write(shard) = HashMap::new();
        }
        self.samples.store(0, Ordering::Relaxed);
    }

    pub fn agent_offset(&self, agent: &str) -> Option<(u64, u64)> {
        self.offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent)
            .copied()
    }

    pub fn set_agent_offsets(&self, applied: impl IntoIterator<Item = (String, (u64, u64))>) {
        let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        offsets.extend(applied);
    }
}

/// Merges `new` into `held` (both ascending, unique timestamps); `new` wins a shared
/// timestamp. Appending after the last held sample, the usual case, is a plain extend.
fn merge_into(held: &mut Vec<Sample>, new: Vec<Sample>) {
    let (Some(last), Some(first)) = (held.last(), new.first()) else {
        held.extend(new);
        return;
    };
    if first.timestamp_ms > last.timestamp_ms {
        held.extend(new);
        return;
    }
    let old = std::mem::take(held);
    held.reserve(old.len() + new.len());
    let (mut a, mut b) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.timestamp_ms < y.timestamp_ms => held.extend(a.next()),
            (Some(x), Some(y)) if x.timestamp_ms == y.timestamp_ms => {
                a.next();
                held.extend(b.next());
            }
            (Some(_), Some(_)) | (None, Some(_)) => held.extend(b.next()),
            (Some(_), None) => held.extend(a.next()),
            (None, None) => break,
        }
    }
}

/// Merges samples read from fjall (`stored`) with the head's (`head`), both ascending with
/// unique timestamps; the head wins a shared timestamp.
pub(crate) fn overlay(stored: Vec<Sample>, head: Vec<Sample>) -> Vec<Sample> {
    if stored.is_empty() {
        return head;
    }
    let mut out = stored;
    merge_into(&mut out, head);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(points: &[(i64, f64)]) -> Vec<Sample> {
        points.iter().map(|&(t, v)| Sample::new(t, v)).collect()
    }

    #[test]
    fn appends_merge_in_time_order_and_the_last_write_wins() {
        let head = Head::new();
        let id = SeriesId(7);
        let tenant = Tenant::default();
        head.append(id, &tenant, s(&[(10, 1.0), (20, 2.0)]));
        head.append(id, &tenant, s(&[(30, 3.0)]));
        head.append(id, &tenant, s(&[(5, 0.5), (20, 22.0), (25, 2.5)]));
        assert_eq!(
            head.range(id, i64::MIN, i64::MAX),
            s(&[(5, 0.5), (10, 1.0), (20, 22.0), (25, 2.5), (30, 3.0)])
        );
        assert_eq!(head.len(), 5);
        assert_eq!(
            head.range(id, 10, 25),
            s(&[(10, 1.0), (20, 22.0), (25, 2.5)])
        );
        assert!(head.range(SeriesId(8), i64::MIN, i64::MAX).is_empty());
        head.clear();
        assert_eq!(head.len(), 0);
        assert!(!head.contains(id));
    }

    #[test]
    fn overlay_prefers_the_head() {
        let stored = s(&[(1, 1.0), (2, 2.0), (4, 4.0)]);
        let head = s(&[(2, 20.0), (3, 3.0), (5, 5.0)]);
        assert_eq!(
            overlay(stored, head),
            s(&[(1, 1.0), (2, 20.0), (3, 3.0), (4, 4.0), (5, 5.0)])
        );
    }
}

//! The last-value cache: each series' latest sample in memory, so that an instant query at
//! "now" (`x`, `last_over_time(x[d])`, `timestamp(x)`, the fleet table) reads no chunk.
//!
//! An entry is only ever a fact about storage, never a guess:
//! - `Latest(s)`: `s` is the series' sample with the highest timestamp (a stale marker
//!   included), as a read of all its samples would end.
//! - `NoneSince(f)`: the series holds no sample at or after `f`.
//!
//! A missing entry means "unknown". Entries come from two places. The writer, after it
//! appended a group to the head, tells the cache each series' last new sample
//! ([`LastValues::observe`]): that moves a known entry forward (the last write wins a shared
//! timestamp, as in the head), and makes a new series known (all its samples are in the
//! group); a series that is unknown stays unknown, since older data may be later than the
//! group's. A query that misses near "now" reads the series from its window start to the end
//! of time and fills the entry with what it found ([`LastValues::begin_fill`]): the entry is
//! marked as filling first, a write that observes the mark removes it, and the fill only
//! lands if its mark is still there, so a fill never hides a write it did not read.
//! A retention drop removes every entry it may have made false, a series removal its own.
//!
//! Memory: at most `budget / ENTRY_BYTES` entries (the map's slot, key and value, rounded
//! up for the table's spare capacity); past it a new entry replaces an arbitrary one of its
//! shard (counted as an eviction).

use foldhash::{HashMap, HashMapExt, HashSet};
use protocols::{Sample, SeriesId, Tenant};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Bytes one entry is counted as: its table slot (key, value, control byte: 33 bytes) at the
/// table's lowest load just after it grew (7/16), rounded up.
pub const ENTRY_BYTES: u64 = 80;

/// The default of the last-value cache's budget (`--last-value-cache-mib`): 128 MiB, about
/// 1.7 million series.
pub const DEFAULT_BUDGET_BYTES: u64 = 128 * 1024 * 1024;

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    Latest(Sample),
    NoneSince(i64),
    /// A fill is reading the series; its token.
    Filling(u64),
}

/// What the cache knows about a series' latest sample in a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup {
    /// The latest sample in the window, or that there is none.
    Hit(Option<Sample>),
    /// Not known: read storage.
    Miss,
}

pub struct LastValues {
    shards: Box<[Mutex<HashMap<SeriesId, Slot>>]>,
    max_per_shard: usize,
    next_token: AtomicU64,
    entries: AtomicUsize,
    /// Lookups answered, since start.
    hits: AtomicU64,
}

fn lock(shard: &Mutex<HashMap<SeriesId, Slot>>) -> MutexGuard<'_, HashMap<SeriesId, Slot>> {
    // Every mutation below completes under the lock: a poisoned map is still whole.
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

impl LastValues {
    /// A cache of at most `budget_bytes`; 0 turns it off.
    pub fn new(budget_bytes: u64) -> Self {
        let entries = usize::try_from(budget_bytes / ENTRY_BYTES).unwrap_or(usize::MAX);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_per_shard: entries / SHARDS,
            next_token: AtomicU64::new(1),
            entries: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_per_shard > 0
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the tables hold now (their allocated slots, whether used or not).
    pub fn heap_bytes(&self) -> u64 {
        let slot = (std::mem::size_of::<(SeriesId, Slot)>() + 1) as u64;
        self.shards
            .iter()
            .map(|s| {
                let capacity = lock(s).capacity() as u64;
                // The table allocates a power of two of slots, of which it fills 7/8.
                (capacity * 8).div_ceil(7).next_power_of_two() * slot
            })
            .sum()
    }

    /// Lookups answered from the cache since start.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn shard(&self, id: SeriesId) -> &Mutex<HashMap<SeriesId, Slot>> {
        &self.shards[(id.0 as usize) % SHARDS]
    }

    /// The latest sample of `id` with `start_ms <= timestamp <= end_ms`, if known.
    pub fn lookup(&self, id: SeriesId, start_ms: i64, end_ms: i64) -> Lookup {
        if !self.enabled() {
            return Lookup::Miss;
        }
        let found = lock(self.shard(id)).get(&id).copied();
        let answer = match found {
            // Nothing after `s`: the latest sample up to `end` is `s`, if it is in the window.
            Some(Slot::Latest(s)) if s.timestamp_ms <= end_ms => {
                Lookup::Hit((s.timestamp_ms >= start_ms).then_some(s))
            }
            Some(Slot::NoneSince(f)) if start_ms >= f => Lookup::Hit(None),
            _ => Lookup::Miss,
        };
        let outcome = match answer {
            Lookup::Hit(_) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                "hit"
            }
            Lookup::Miss => "miss",
        };
        metrics::counter!(LOOKUPS, "outcome" => outcome).increment(1);
        answer
    }

    /// The writer appended samples of `id` ending in `last` (its latest new sample) to the
    /// head; `created`: the series is new, so these are all its samples.
    pub fn observe(&self, id: SeriesId, last: Sample, created: bool) {
        if !self.enabled() {
            return;
        }
        let mut shard = lock(self.shard(id));
        match shard.get(&id).copied() {
            Some(Slot::Latest(s)) if s.timestamp_ms > last.timestamp_ms => {}
            Some(Slot::Latest(_)) => {
                shard.insert(id, Slot::Latest(last));
            }
            Some(Slot::NoneSince(f)) if last.timestamp_ms >= f => {
                shard.insert(id, Slot::Latest(last));
            }
            Some(Slot::NoneSince(_)) => {}
            Some(Slot::Filling(_)) => {
                // The fill may have read before this write: it must not land.
                shard.remove(&id);
                self.entries.fetch_sub(1, Ordering::Relaxed);
            }
            None if created => self.insert_new(&mut shard, id, Slot::Latest(last)),
            None => {}
        }
    }

    /// Marks `id` as being filled by a read; `None` when it is known or being filled
    /// already (read without filling then).
    pub fn begin_fill(&self, id: SeriesId) -> Option<u64> {
        if !self.enabled() {
            return None;
        }
        let mut shard = lock(self.shard(id));
        if shard.contains_key(&id) {
            // Known but not for this window (an older query time), or another fill runs.
            return None;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.insert_new(&mut shard, id, Slot::Filling(token));
        Some(token)
    }

    /// Ends the fill `token` of `id`, which read every sample from `from_ms` on and found
    /// `latest` last (`None`: none). Lands only if no write or drop came in between.
    pub fn finish_fill(&self, id: SeriesId, token: u64, from_ms: i64, latest: Option<Sample>) {
        let mut shard = lock(self.shard(id));
        if shard.get(&id) == Some(&Slot::Filling(token)) {
            let slot = match latest {
                Some(s) => Slot::Latest(s),
                None => Slot::NoneSince(from_ms),
            };
            shard.insert(id, slot);
            drop(shard);
            self.publish();
        }
    }

    /// Gives up the fill `token` of `id` (the read failed).
    pub fn cancel_fill(&self, id: SeriesId, token: u64) {
        let mut shard = lock(self.shard(id));
        if shard.get(&id) == Some(&Slot::Filling(token)) {
            shard.remove(&id);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Samples with `start_ms <= timestamp <= end_ms` were removed (a retention drop, of one
    /// tenant, but series ids do not say whose they are, so every tenant's entries are
    /// checked): entries whose latest sample went are unknown now, and so are fills in
    /// flight. "Nothing since" stays true.
    pub fn removed_range(&self, start_ms: i64, end_ms: i64) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, slot| match slot {
                Slot::Latest(s) => !(start_ms..=end_ms).contains(&s.timestamp_ms),
                Slot::NoneSince(_) => true,
                Slot::Filling(_) => false,
            });
            self.entries
                .fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
        self.publish();
    }

    /// Series left the index: their entries go.
    pub fn forget(&self, ids: impl IntoIterator<Item = SeriesId>) {
        for id in ids {
            if lock(self.shard(id)).remove(&id).is_some() {
                self.entries.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.publish();
    }

    /// Sets the size gauges (the writer calls it once per group).
    pub fn publish(&self) {
        let n = self.len();
        metrics::gauge!(ENTRIES).set(n as f64);
        metrics::gauge!(BYTES).set(n as f64 * ENTRY_BYTES as f64);
    }

    fn insert_new(&self, shard: &mut HashMap<SeriesId, Slot>, id: SeriesId, slot: Slot) {
        if shard.len() >= self.max_per_shard {
            // Arbitrary, not least recently used: keeping an order would cost every lookup a
            // write; a full cache is sized too small, which the eviction counter shows.
            let Some(victim) = shard.keys().next().copied() else {
                return;
            };
            shard.remove(&victim);
            self.entries.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(EVICTIONS).increment(1);
        }
        shard.insert(id, slot);
        self.entries.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a group appended to the head, as the caches need it: taken before the samples move
/// into the head, reported after ([`Appended::report`]), so a read that follows the report
/// sees the samples.
/// One series' samples in a group: id, hash of its metric name, samples (ascending).
pub(crate) type NamedSamples = (SeriesId, u64, Vec<Sample>);

pub(crate) struct Appended(Vec<(Tenant, Vec<Touched>)>);

struct Touched {
    id: SeriesId,
    /// Hash of the metric name ([`crate::cache::name_hash`]).
    name: u64,
    first_ms: i64,
    last: Sample,
    created: bool,
}

impl Appended {
    /// `head`: per batch, its tenant and each series' (id, name hash, ascending samples);
    /// `created`: the series new in this group.
    pub fn of(head: &[(Tenant, Vec<NamedSamples>)], created: &HashSet<SeriesId>) -> Self {
        Self(
            head.iter()
                .map(|(tenant, series)| {
                    let touched = series
                        .iter()
                        .filter_map(|(id, name, samples)| {
                            Some(Touched {
                                id: *id,
                                name: *name,
                                first_ms: samples.first()?.timestamp_ms,
                                last: *samples.last()?,
                                created: created.contains(id),
                            })
                        })
                        .collect();
                    (tenant.clone(), touched)
                })
                .collect(),
        )
    }

    /// Tells the last-value cache and the range-result cache.
    pub fn report(self, last_values: &LastValues, range_cache: &crate::cache::RangeCache) {
        for (tenant, touched) in self.0 {
            for t in &touched {
                last_values.observe(t.id, t.last, t.created);
            }
            range_cache.written(
                &tenant,
                touched.iter().map(|t| crate::cache::Written {
                    name: t.name,
                    min_ms: t.first_ms,
                    max_ms: t.last.timestamp_ms,
                }),
            );
        }
        last_values.publish();
    }
}

/// `updraft_core_last_value_lookups_total{outcome="hit"|"miss"}`.
pub const LOOKUPS: &str = "updraft_core_last_value_lookups_total";
pub const ENTRIES: &str = "updraft_core_last_value_entries";
pub const BYTES: &str = "updraft_core_last_value_bytes";
pub const EVICTIONS: &str = "updraft_core_last_value_evictions_total";

/// Registers the cache's metrics at 0, so a dashboard sees them before the first query.
pub fn register_metrics(budget_bytes: u64) {
    for outcome in ["hit", "miss"] {
        metrics::counter!(LOOKUPS, "outcome" => outcome).absolute(0);
    }
    metrics::counter!(EVICTIONS).absolute(0);
    metrics::gauge!(ENTRIES).set(0.0);
    metrics::gauge!(BYTES).set(0.0);
    metrics::gauge!("updraft_core_last_value_budget_bytes").set(budget_bytes as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64, v: f64) -> Sample {
        Sample::new(t, v)
    }

    #[test]
    fn writes_move_known_entries_forward_and_leave_unknown_ones_unknown() {
        let c = LastValues::new(1 << 20);
        let (a, b) = (SeriesId(1), SeriesId(2));
        c.observe(a, s(100, 1.0), true);
        c.observe(b, s(100, 1.0), false);
        assert_eq!(c.lookup(a, 0, 200), Lookup::Hit(Some(s(100, 1.0))));
        assert_eq!(c.lookup(b, 0, 200), Lookup::Miss);
        // Late data does not move it back; a shared timestamp takes the newer value.
        c.observe(a, s(50, 2.0), false);
        assert_eq!(c.lookup(a, 0, 200), Lookup::Hit(Some(s(100, 1.0))));
        c.observe(a, s(100, 3.0), false);
        assert_eq!(c.lookup(a, 0, 200), Lookup::Hit(Some(s(100, 3.0))));
        // Out of the window: nothing; a query before the latest sample: unknown.
        assert_eq!(c.lookup(a, 101, 200), Lookup::Hit(None));
        assert_eq!(c.lookup(a, 0, 99), Lookup::Miss);
    }

    #[test]
    fn a_fill_never_lands_over_a_write_it_did_not_see() {
        let c = LastValues::new(1 << 20);
        let id = SeriesId(3);
        let token = c.begin_fill(id).expect("unknown series");
        assert_eq!(c.begin_fill(id), None, "one fill at a time");
        c.observe(id, s(500, 5.0), false);
        c.finish_fill(id, token, 0, Some(s(400, 4.0)));
        assert_eq!(c.lookup(id, 0, 1000), Lookup::Miss);
        let token = c.begin_fill(id).expect("unknown again");
        c.finish_fill(id, token, 300, None);
        assert_eq!(c.lookup(id, 300, 1000), Lookup::Hit(None));
        assert_eq!(c.lookup(id, 299, 1000), Lookup::Miss);
        c.observe(id, s(250, 1.0), false);
        assert_eq!(c.lookup(id, 300, 1000), Lookup::Hit(None));
        c.observe(id, s(600, 6.0), false);
        assert_eq!(c.lookup(id, 0, 1000), Lookup::Hit(Some(s(600, 6.0))));
    }

    #[test]
    fn drops_and_removals_invalidate() {
        let c = LastValues::new(1 << 20);
        c.observe(SeriesId(1), s(100, 1.0), true);
        c.observe(SeriesId(2), s(900, 1.0), true);
        let filling = c.begin_fill(SeriesId(3)).expect("unknown");
        c.removed_range(0, 500);
        assert_eq!(c.lookup(SeriesId(1), 0, 1000), Lookup::Miss);
        assert_eq!(
            c.lookup(SeriesId(2), 0, 1000),
            Lookup::Hit(Some(s(900, 1.0)))
        );
        c.finish_fill(SeriesId(3), filling, 0, Some(s(200, 1.0)));
        assert_eq!(c.lookup(SeriesId(3), 0, 1000), Lookup::Miss);
        c.forget([SeriesId(2)]);
        assert_eq!(c.lookup(SeriesId(2), 0, 1000), Lookup::Miss);
        assert_eq!(c.len(), 0);
    }

    /// A million series against a budget for a quarter of them: the tables stay within it.
    #[test]
    fn a_million_series_stay_within_the_budget() {
        let budget = 250_000 * ENTRY_BYTES;
        let c = LastValues::new(budget);
        for i in 0..1_000_000u64 {
            // Ids are hashes: spread them as the real ones are.
            let id = SeriesId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            c.observe(id, s(1, 1.0), true);
            if i % 3 == 0 {
                let _ = c.begin_fill(SeriesId(id.0 ^ 1));
            }
        }
        assert!(c.len() <= 250_000, "{} entries", c.len());
        assert!(c.heap_bytes() <= budget, "{} bytes", c.heap_bytes());
    }

    #[test]
    fn the_budget_bounds_the_entries() {
        let c = LastValues::new(SHARDS as u64 * 4 * ENTRY_BYTES);
        for i in 0..10_000 {
            c.observe(SeriesId(i), s(1, 1.0), true);
        }
        assert_eq!(c.len(), SHARDS * 4);
        let off = LastValues::new(0);
        off.observe(SeriesId(1), s(1, 1.0), true);
        assert_eq!(off.lookup(SeriesId(1), 0, 10), Lookup::Miss);
        assert_eq!(off.begin_fill(SeriesId(1)), None);
    }
}

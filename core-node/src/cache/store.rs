//! The extents held, their LRU order, and invalidation.

use super::{BYTES, ENTRIES, EVICTIONS, INVALIDATIONS};
use protocols::Tenant;
use query::Series;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// One write the storage writer applied, as the cache needs it: its metric and time span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// [`super::name_hash`] of the series' metric name.
    pub name: u64,
    pub min_ms: i64,
    pub max_ms: i64,
}

/// A cached query: tenant, text, step and the phase of its step grid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct QueryKey {
    pub tenant: Tenant,
    pub query: String,
    pub step_ms: i64,
    pub phase_ms: i64,
}

/// What the cache knows of a query to invalidate its extents.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    /// Hashes of the metric names it reads, sorted; `None`: any.
    pub names: Option<Vec<u64>>,
    pub back_ms: i64,
    pub forward_ms: i64,
}

impl Shape {
    fn reads_any(&self, names: Option<&[u64]>) -> bool {
        match (&self.names, names) {
            (Some(ours), Some(theirs)) => theirs.iter().any(|n| ours.binary_search(n).is_ok()),
            _ => true,
        }
    }
}

/// An extent's answer: the series with points in it, each point in the extent.
pub(super) type Extent = Arc<Vec<Series>>;

struct Held {
    extent: Extent,
    /// Time of the extent's first and last step.
    first_ms: i64,
    last_ms: i64,
    bytes: u64,
    tick: u64,
}

struct Query {
    shape: Shape,
    extents: BTreeMap<i64, Held>,
}

/// An invalidation, remembered so that a computation that started before it does not store
/// a result it may have missed.
struct Event {
    seq: u64,
    tenant: Tenant,
    names: Option<Vec<u64>>,
    min_ms: i64,
    max_ms: i64,
}

/// Invalidations remembered; a computation older than the oldest one remembered stores
/// nothing.
const EVENTS_KEPT: usize = 4096;

pub(super) struct Store {
    max_bytes: u64,
    bytes: u64,
    entries: usize,
    tick: u64,
    queries: HashMap<Arc<QueryKey>, Query>,
    /// LRU order: tick → extent.
    lru: BTreeMap<u64, (Arc<QueryKey>, i64)>,
    /// Invalidations so far.
    seq: u64,
    events: VecDeque<Event>,
    /// Sequence of the oldest invalidation no longer in `events` (0: none dropped).
    forgotten_seq: u64,
}

/// The read span of an extent from `first_ms` to `last_ms` for `shape`.
pub(super) fn read_span(shape: &Shape, first_ms: i64, last_ms: i64) -> (i64, i64) {
    (
        first_ms.saturating_sub(shape.back_ms),
        last_ms.saturating_add(shape.forward_ms),
    )
}

fn overlaps(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

impl Store {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            bytes: 0,
            entries: 0,
            tick: 0,
            queries: HashMap::new(),
            lru: BTreeMap::new(),
            seq: 0,
            events: VecDeque::new(),
            forgotten_seq: 0,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The cached extent `index` of `key`, marked as used.
    pub fn get(&mut self, key: &QueryKey, index: i64) -> Option<Extent> {
        let (stored_key, _) = self.queries.get_key_value(key)?;
        let stored_key = Arc::clone(stored_key);
        self.tick += 1;
        let tick = self.tick;
        let query = self.queries.get_mut(key)?;
        let held = query.extents.get_mut(&index)?;
        self.lru.remove(&held.tick);
        held.tick = tick;
        self.lru.insert(tick, (stored_key, index));
        Some(Arc::clone(&held.extent))
    }

    /// Stores extent `index` of `key` (steps `first_ms..=last_ms`), computed by a computation
    /// that started at invalidation `since`; refused when an invalidation since then may have
    /// touched it, or when it is too large.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        key: &QueryKey,
        shape: &Shape,
        index: i64,
        first_ms: i64,
        last_ms: i64,
        extent: Extent,
        since: u64,
    ) -> bool {
        let bytes = extent_bytes(&extent);
        if bytes > self.max_bytes / 8 {
            return false;
        }
        let span = read_span(shape, first_ms, last_ms);
        if since < self.forgotten_seq {
            return false;
        }
        let touched = self.events.iter().any(|e| {
            e.seq > since
                && e.tenant == key.tenant
                && shape.reads_any(e.names.as_deref())
                && overlaps(span, (e.min_ms, e.max_ms))
        });
        if touched {
            return false;
        }
        let stored_key = match self.queries.get_key_value(key) {
            Some((k, _)) => Arc::clone(k),
            None => {
                let k = Arc::new(key.clone());
                self.queries.insert(
                    Arc::clone(&k),
                    Query {
                        shape: shape.clone(),
                        extents: BTreeMap::new(),
                    },
                );
                k
            }
        };
        self.tick += 1;
        let tick = self.tick;
        let Some(query) = self.queries.get_mut(key) else {
            return false;
        };
        let old = query.extents.insert(
            index,
            Held {
                extent,
                first_ms,
                last_ms,
                bytes,
                tick,
            },
        );
        if let Some(old) = old {
            self.lru.remove(&old.tick);
            self.bytes -= old.bytes;
            self.entries -= 1;
        }
        self.lru.insert(tick, (stored_key, index));
        self.bytes += bytes;
        self.entries += 1;
        while self.bytes > self.max_bytes {
            let Some((_, (k, i))) = self.lru.pop_first() else {
                break;
            };
            self.remove(&k, i);
            metrics::counter!(EVICTIONS).increment(1);
        }
        self.publish();
        true
    }

    /// Removes extent `index` of `key` (its LRU slot is the caller's).
    fn remove(&mut self, key: &QueryKey, index: i64) {
        let Some(query) = self.queries.get_mut(key) else {
            return;
        };
        if let Some(held) = query.extents.remove(&index) {
            self.bytes -= held.bytes;
            self.entries -= 1;
        }
        if query.extents.is_empty() {
            self.queries.remove(key);
        }
    }

    /// Samples of `tenant` in `min_ms..=max_ms` changed, of the metrics `names` (`None`: any):
    /// every extent that read there goes. Returns how many.
    pub fn invalidate(
        &mut self,
        tenant: &Tenant,
        names: Option<Vec<u64>>,
        min_ms: i64,
        max_ms: i64,
    ) -> usize {
        self.seq += 1;
        let mut gone = Vec::new();
        for (key, query) in &self.queries {
            if &key.tenant != tenant || !query.shape.reads_any(names.as_deref()) {
                continue;
            }
            for (&index, held) in &query.extents {
                let span = read_span(&query.shape, held.first_ms, held.last_ms);
                if overlaps(span, (min_ms, max_ms)) {
                    gone.push((Arc::clone(key), index, held.tick));
                }
            }
        }
        for (key, index, tick) in &gone {
            self.lru.remove(tick);
            self.remove(key, *index);
        }
        if self.events.len() == EVENTS_KEPT
            && let Some(oldest) = self.events.pop_front()
        {
            self.forgotten_seq = oldest.seq;
        }
        self.events.push_back(Event {
            seq: self.seq,
            tenant: tenant.clone(),
            names,
            min_ms,
            max_ms,
        });
        metrics::counter!(INVALIDATIONS).increment(gone.len() as u64);
        self.publish();
        gone.len()
    }

    fn publish(&self) {
        metrics::gauge!(BYTES).set(self.bytes as f64);
        metrics::gauge!(ENTRIES).set(self.entries as f64);
    }
}

/// Estimated bytes of an extent: what its vectors and strings hold, plus their headers.
pub(super) fn extent_bytes(extent: &[Series]) -> u64 {
    let mut bytes = 64;
    for s in extent {
        bytes += 48 + 16 * s.points.len() as u64;
        for l in s.metric.iter() {
            bytes += 48 + (l.name.len() + l.value.len()) as u64;
        }
    }
    bytes
}

#[cfg(test)]
impl Store {
    /// Checks the books: the byte and entry counts are the held extents', every extent has
    /// one LRU slot and every slot one extent.
    fn check(&self) {
        let held: Vec<&Held> = self
            .queries
            .values()
            .flat_map(|q| q.extents.values())
            .collect();
        assert_eq!(self.entries, held.len());
        assert_eq!(self.bytes, held.iter().map(|h| h.bytes).sum::<u64>());
        assert_eq!(self.lru.len(), held.len());
        for (tick, (key, index)) in &self.lru {
            let h = &self.queries[key].extents[index];
            assert_eq!(h.tick, *tick);
        }
        assert!(self.queries.values().all(|q| !q.extents.is_empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::Sample;
    use query::LabelSet;

    fn key(tenant: &str, query: &str) -> QueryKey {
        QueryKey {
            tenant: Tenant::new(tenant).expect("valid"),
            query: query.to_owned(),
            step_ms: 1000,
            phase_ms: 0,
        }
    }

    fn shape(names: Option<Vec<u64>>) -> Shape {
        Shape {
            names,
            back_ms: 100,
            forward_ms: 0,
        }
    }

    fn extent(points: usize) -> Extent {
        Arc::new(vec![Series {
            metric: LabelSet::empty(),
            points: (0..points).map(|i| Sample::new(i as i64, 1.0)).collect(),
        }])
    }

    #[test]
    fn invalidation_takes_exactly_the_extents_whose_reads_overlap() {
        let mut s = Store::new(1 << 20);
        let (k, sh) = (key("a", "x"), shape(Some(vec![1])));
        for i in 0..4 {
            assert!(s.put(&k, &sh, i, i * 1000, i * 1000 + 900, extent(1), 0));
        }
        // Extent 1 reads [900, 1900], extent 2 [1900, 2900]: a write at 1900..=1950 touches
        // both, and only them.
        assert_eq!(
            s.invalidate(&Tenant::new("a").expect("valid"), Some(vec![1]), 1900, 1950),
            2
        );
        assert!(s.get(&k, 0).is_some() && s.get(&k, 3).is_some());
        assert!(s.get(&k, 1).is_none() && s.get(&k, 2).is_none());
        // Another tenant, another metric: nothing.
        assert_eq!(
            s.invalidate(&Tenant::new("b").expect("valid"), None, 0, 5000),
            0
        );
        assert_eq!(
            s.invalidate(&Tenant::new("a").expect("valid"), Some(vec![2]), 0, 5000),
            0
        );
        assert_eq!(
            s.invalidate(&Tenant::new("a").expect("valid"), None, 0, 5000),
            2
        );
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn a_result_computed_across_an_invalidation_is_not_stored() {
        let mut s = Store::new(1 << 20);
        let (k, sh) = (key("a", "x"), shape(Some(vec![1])));
        let since = s.seq();
        s.invalidate(&Tenant::new("a").expect("valid"), Some(vec![1]), 500, 500);
        assert!(!s.put(&k, &sh, 0, 0, 900, extent(1), since));
        assert!(s.put(&k, &sh, 5, 5000, 5900, extent(1), since), "elsewhere");
        assert!(s.put(&k, &sh, 0, 0, 900, extent(1), s.seq()));
        // Past the remembered invalidations: refused whatever it is.
        let since = s.seq();
        for _ in 0..=EVENTS_KEPT {
            s.invalidate(&Tenant::new("b").expect("valid"), None, 0, 0);
        }
        assert!(!s.put(&k, &sh, 7, 7000, 7900, extent(1), since));
    }

    #[test]
    fn memory_stays_under_the_budget_least_recently_used_first() {
        let one = extent_bytes(&extent(100));
        let mut s = Store::new(one * 10);
        let (k, sh) = (key("a", "x"), shape(None));
        for i in 0..10 {
            assert!(s.put(&k, &sh, i, i * 1000, i * 1000 + 900, extent(100), 0));
        }
        assert!(s.get(&k, 0).is_some());
        assert!(s.put(&k, &sh, 10, 10_000, 10_900, extent(100), 0));
        assert!(s.bytes() <= one * 10);
        assert!(s.get(&k, 0).is_some(), "recently used");
        assert!(s.get(&k, 1).is_none(), "least recently used");
        // Too large for the budget: not stored.
        assert!(!s.put(&k, &sh, 11, 0, 0, extent(10_000), 0));
        for i in 0..1000 {
            s.put(&key("b", &i.to_string()), &sh, 0, 0, 900, extent(100), 0);
            assert!(s.bytes() <= one * 10);
        }
    }

    /// A hostile mix: many tenants and queries, extents from tiny to the largest admitted,
    /// reads, invalidations and rewrites of the same extents, interleaved at random. The
    /// budget holds after every step, and the books stay balanced.
    #[test]
    fn a_hostile_mix_stays_within_the_budget() {
        let budget = 1 << 20;
        let mut s = Store::new(budget);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..20_000 {
            let tenant = format!("t{}", next(5));
            let k = key(&tenant, &format!("q{}", next(200)));
            let sh = shape(if next(3) == 0 {
                None
            } else {
                Some(vec![next(4)])
            });
            let index = next(50) as i64;
            match next(10) {
                0..=5 => {
                    let points = [1, 10, 100, 1000, 8000][next(5) as usize];
                    s.put(
                        &k,
                        &sh,
                        index,
                        index * 1000,
                        index * 1000 + 900,
                        extent(points),
                        s.seq(),
                    );
                }
                6..=7 => {
                    let _ = s.get(&k, index);
                }
                _ => {
                    let t = Tenant::new(tenant).expect("valid");
                    let at = next(50_000) as i64;
                    s.invalidate(&t, Some(vec![next(4)]), at, at + next(5000) as i64);
                }
            }
            assert!(s.bytes() <= budget);
            s.check();
        }
    }
}

//! [`RangeCache`]: a range query answered from cached extents plus what has to be computed.

use super::store::{Extent, QueryKey, Shape, Store, Written, read_span};
use super::{EXTENT_MIN_SPAN_MS, EXTENT_MIN_STEPS, EXTENTS, QUERIES, RangeCacheOptions, name_hash};
use crate::storage::Clock;
use protocols::{Sample, Tenant};
use query::{DataSource, Engine, QueryError, Series, Value};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Metric names one invalidation lists; past that it invalidates every metric.
const MAX_NAMES: usize = 256;

pub struct RangeCache {
    store: Mutex<Store>,
    enabled: bool,
    settle_ms: i64,
    /// A write with a sample at or before this may touch a cached extent, or one being
    /// computed: the writer reports those ([`Self::written`]) and skips the rest (writes
    /// arriving in order, at "now", are past every final extent).
    guard_ms: AtomicI64,
    clock: Clock,
    /// Extents taken from the cache and computed to be stored, since start.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the range cache did since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
}

/// One extent of a request: cached, or computed over `from_k..=to_k` on the step grid
/// (`keep`: the whole extent, final, to be stored).
enum Part {
    Cached(Extent),
    Compute {
        index: i64,
        from_k: i64,
        to_k: i64,
        keep: bool,
    },
}

impl RangeCache {
    pub fn new(options: &RangeCacheOptions, clock: Clock) -> Self {
        Self {
            store: Mutex::new(Store::new(options.max_bytes)),
            enabled: options.max_bytes > 0,
            settle_ms: i64::try_from(options.settle.as_millis()).unwrap_or(i64::MAX),
            guard_ms: AtomicI64::new(i64::MIN),
            clock,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // Every mutation of the store completes under the lock: a poisoned one is whole.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> RangeStats {
        RangeStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.store().bytes(),
        }
    }

    /// The storage writer applied `writes` of `tenant` (and they are visible to reads):
    /// those that may touch a cached extent invalidate it. Cheap for writes in order: one
    /// atomic load.
    pub fn written(&self, tenant: &Tenant, writes: impl IntoIterator<Item = Written>) {
        if !self.enabled {
            return;
        }
        let guard = self.guard_ms.load(Ordering::SeqCst);
        let mut span: Option<(i64, i64)> = None;
        let mut names = Some(Vec::new());
        for w in writes.into_iter().filter(|w| w.min_ms <= guard) {
            span = Some(span.map_or((w.min_ms, w.max_ms), |(lo, hi)| {
                (lo.min(w.min_ms), hi.max(w.max_ms))
            }));
            if let Some(n) = &mut names {
                n.push(w.name);
                if n.len() > MAX_NAMES * 4 {
                    n.sort_unstable();
                    n.dedup();
                }
            }
        }
        let Some((lo, hi)) = span else {
            return;
        };
        let names = names.map(|mut n| {
            n.sort_unstable();
            n.dedup();
            n
        });
        let names = names.filter(|n| n.len() <= MAX_NAMES);
        self.store().invalidate(tenant, names, lo, hi);
    }

    /// Samples of `tenant` in `min_ms..=max_ms` were removed (retention).
    pub fn removed(&self, tenant: &Tenant, min_ms: i64, max_ms: i64) {
        if self.enabled {
            self.store().invalidate(tenant, None, min_ms, max_ms);
        }
    }

    /// [`Engine::range`], from the cache where it can be: equal to what the engine answers.
    #[allow(clippy::too_many_arguments)]
    pub fn range(
        &self,
        engine: &Engine,
        source: &dyn DataSource,
        tenant: &Tenant,
        query: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<Value, QueryError> {
        query::validate_range(start_ms, end_ms, step_ms)?;
        let uncached = || {
            metrics::counter!(QUERIES, "path" => "uncacheable").increment(1);
            engine.range(source, tenant, query, start_ms, end_ms, step_ms)
        };
        if !self.enabled {
            return uncached();
        }
        // A query that does not parse gets the engine's own error.
        let Ok(Some(reach)) = query::reach(query, engine.options()) else {
            return uncached();
        };
        let Some(grid) = Grid::new(start_ms, end_ms, step_ms) else {
            return uncached();
        };
        metrics::counter!(QUERIES, "path" => "cached").increment(1);
        let key = QueryKey {
            tenant: tenant.clone(),
            query: query.to_owned(),
            step_ms,
            phase_ms: grid.phase_ms,
        };
        let shape = Shape {
            names: reach.names.map(|names| {
                let mut h: Vec<u64> = names.iter().map(|n| name_hash(n)).collect();
                h.sort_unstable();
                h
            }),
            back_ms: reach.back_ms,
            forward_ms: reach.forward_ms,
        };
        let horizon = self.clock.now_ms().saturating_sub(self.settle_ms);

        let mut parts = Vec::new();
        let mut guard = i64::MIN;
        let since = {
            let mut store = self.store();
            for index in grid.extents() {
                let (first_k, last_k) = grid.extent_steps(index);
                let (Some(first_ms), Some(last_ms)) = (grid.time(first_k), grid.time(last_k))
                else {
                    drop(store);
                    return uncached();
                };
                let (_, reads_to) = read_span(&shape, first_ms, last_ms);
                let part = if reads_to < horizon {
                    match store.get(&key, index) {
                        Some(extent) => Part::Cached(extent),
                        None => {
                            guard = guard.max(reads_to);
                            Part::Compute {
                                index,
                                from_k: first_k,
                                to_k: last_k,
                                keep: true,
                            }
                        }
                    }
                } else {
                    Part::Compute {
                        index,
                        from_k: first_k.max(grid.k0),
                        to_k: last_k.min(grid.k1),
                        keep: false,
                    }
                };
                parts.push(part);
            }
            // Before reading anything: from here on the writer reports writes this
            // computation may miss, and the invalidations after `since` are checked below.
            self.guard_ms.fetch_max(guard, Ordering::SeqCst);
            store.seq()
        };

        let computed = self.compute(engine, source, tenant, query, &grid, &parts)?;
        let mut extents: Vec<Extent> = Vec::with_capacity(parts.len());
        let mut computed = computed.into_iter();
        let (mut hits, mut misses, mut fresh) = (0u64, 0u64, 0u64);
        for part in &parts {
            match part {
                Part::Cached(extent) => {
                    hits += 1;
                    extents.push(Arc::clone(extent));
                }
                Part::Compute {
                    index,
                    from_k,
                    to_k,
                    keep,
                } => {
                    let extent = computed.next().unwrap_or_default();
                    if *keep {
                        misses += 1;
                        if let (Some(first_ms), Some(last_ms)) =
                            (grid.time(*from_k), grid.time(*to_k))
                        {
                            self.store().put(
                                &key,
                                &shape,
                                *index,
                                first_ms,
                                last_ms,
                                Arc::clone(&extent),
                                since,
                            );
                        }
                    } else {
                        fresh += 1;
                    }
                    extents.push(extent);
                }
            }
        }
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
        metrics::counter!(EXTENTS, "outcome" => "hit").increment(hits);
        metrics::counter!(EXTENTS, "outcome" => "miss").increment(misses);
        metrics::counter!(EXTENTS, "outcome" => "uncacheable").increment(fresh);
        Ok(Value::Matrix(assemble(&extents, start_ms, end_ms)))
    }

    /// Evaluates the parts to compute, each run of adjacent ones in one engine call, and
    /// splits the answers by part (in order).
    fn compute(
        &self,
        engine: &Engine,
        source: &dyn DataSource,
        tenant: &Tenant,
        query: &str,
        grid: &Grid,
        parts: &[Part],
    ) -> Result<Vec<Extent>, QueryError> {
        let spans: Vec<(i64, i64)> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Compute { from_k, to_k, .. } => Some((*from_k, *to_k)),
                Part::Cached(_) => None,
            })
            .collect();
        let mut out = Vec::with_capacity(spans.len());
        let mut i = 0;
        while i < spans.len() {
            let mut j = i;
            while spans
                .get(j + 1)
                .is_some_and(|next| next.0 == spans[j].1 + 1)
            {
                j += 1;
            }
            let (Some(from_ms), Some(to_ms)) = (grid.time(spans[i].0), grid.time(spans[j].1))
            else {
                return Err(QueryError::TooManyPoints);
            };
            let matrix = match engine.range(source, tenant, query, from_ms, to_ms, grid.step_ms)? {
                Value::Matrix(m) => m,
                // `Engine::range` answers a matrix or an error.
                _ => Vec::new(),
            };
            for &(from_k, to_k) in &spans[i..=j] {
                let (lo, hi) = (grid.time(from_k), grid.time(to_k));
                let (Some(lo), Some(hi)) = (lo, hi) else {
                    continue;
                };
                out.push(Arc::new(slice(&matrix, lo, hi)));
            }
            i = j + 1;
        }
        Ok(out)
    }
}

/// The series of `matrix` cut to `lo..=hi`, those without points left out.
fn slice(matrix: &[Series], lo: i64, hi: i64) -> Vec<Series> {
    matrix
        .iter()
        .filter_map(|s| {
            let a = s.points.partition_point(|p| p.timestamp_ms < lo);
            let b = s.points.partition_point(|p| p.timestamp_ms <= hi);
            let points: Vec<Sample> = s.points.get(a..b)?.to_vec();
            (!points.is_empty()).then(|| Series {
                metric: s.metric.clone(),
                points,
            })
        })
        .collect()
}

/// The extents' series joined by label set, cut to `start_ms..=end_ms`, sorted by labels as
/// the engine sorts them. Every extent's series are sorted by labels already (an engine
/// answer, or a slice of one), so this is a merge: no hashing of label sets.
fn assemble(extents: &[Extent], start_ms: i64, end_ms: i64) -> Vec<Series> {
    let cut = |points: &[Sample]| -> std::ops::Range<usize> {
        let a = points.partition_point(|p| p.timestamp_ms < start_ms);
        a..points.partition_point(|p| p.timestamp_ms <= end_ms).max(a)
    };
    let mut cursors = vec![0usize; extents.len()];
    let mut out = Vec::new();
    loop {
        let heads = extents.iter().zip(&cursors).filter_map(|(e, &c)| e.get(c));
        let Some(metric) = heads.map(|s| &s.metric).min().cloned() else {
            return out;
        };
        let mut points: Vec<Sample> = Vec::new();
        for (extent, cursor) in extents.iter().zip(cursors.iter_mut()) {
            if let Some(s) = extent.get(*cursor).filter(|s| s.metric == metric) {
                points.extend_from_slice(s.points.get(cut(&s.points)).unwrap_or_default());
                *cursor += 1;
            }
        }
        if !points.is_empty() {
            out.push(Series { metric, points });
        }
    }
}

/// The step grid of a request: steps at `phase + k * step`, the request's `k0..=k1`, in
/// extents of `per` steps.
struct Grid {
    phase_ms: i64,
    step_ms: i64,
    k0: i64,
    k1: i64,
    per: i64,
}

impl Grid {
    fn new(start_ms: i64, end_ms: i64, step_ms: i64) -> Option<Self> {
        let phase_ms = start_ms.rem_euclid(step_ms);
        let k0 = start_ms.checked_sub(phase_ms)? / step_ms;
        let k1 = k0.checked_add(end_ms.checked_sub(start_ms)? / step_ms)?;
        let per = EXTENT_MIN_STEPS.max((EXTENT_MIN_SPAN_MS - 1) / step_ms + 1);
        let grid = Self {
            phase_ms,
            step_ms,
            k0,
            k1,
            per,
        };
        // Every time of every extent the request touches must be representable.
        let (first, _) = grid.extent_steps(k0.div_euclid(per));
        let (_, last) = grid.extent_steps(k1.div_euclid(per));
        grid.time(first)?;
        grid.time(last)?;
        Some(grid)
    }

    fn extents(&self) -> std::ops::RangeInclusive<i64> {
        self.k0.div_euclid(self.per)..=self.k1.div_euclid(self.per)
    }

    fn extent_steps(&self, index: i64) -> (i64, i64) {
        let first = index.saturating_mul(self.per);
        (first, first.saturating_add(self.per - 1))
    }

    fn time(&self, k: i64) -> Option<i64> {
        k.checked_mul(self.step_ms)?.checked_add(self.phase_ms)
    }
}

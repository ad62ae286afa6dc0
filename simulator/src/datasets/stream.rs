//! The arrival-order merge of all entities of a dataset.
//!
//! Each entity yields its ticks in timestamp order, each with an arrival time (the timestamp
//! itself, or later for `iot-trucks`' late ticks). An entity's late ticks wait in its own
//! min-heap; the entity's next event is the earlier of that heap's head and its next on-time
//! tick. A fleet-wide min-heap over entities, keyed by `(arrival_ms, entity index)`, picks the
//! next tick; its samples come out in series order. Ties between a late and an on-time tick of
//! the same entity go to the older timestamp. Memory: one pending tick per entity plus its late
//! ticks (at most a minute's worth), whatever the duration.

use super::{DatasetSpec, Entity, SeriesInfo, entity};
use protocols::Sample;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

/// One sample as a receiver sees it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the sample reaches the receiver (ms since the Unix epoch); ≥ its timestamp.
    pub arrival_ms: i64,
    /// Position of the series in [`super::generate`]'s order.
    pub series_index: u64,
    pub info: Arc<SeriesInfo>,
    pub sample: Sample,
}

/// A late tick waiting for its arrival time, ordered by (arrival, timestamp); timestamps are
/// unique within an entity, so the order is total.
struct Late {
    arrival_ms: i64,
    timestamp_ms: i64,
    values: Vec<f64>,
}

impl Late {
    fn key(&self) -> (i64, i64) {
        (self.arrival_ms, self.timestamp_ms)
    }
}

impl PartialEq for Late {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Late {}

impl PartialOrd for Late {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Late {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

type Pending = Reverse<Late>;

struct EntityStream {
    entity: Box<dyn Entity>,
    /// The next tick that arrives on time, if the entity has more.
    next: Option<(i64, Vec<f64>)>,
    late: BinaryHeap<Pending>,
}

impl EntityStream {
    fn new(mut entity: Box<dyn Entity>) -> Self {
        let mut late = BinaryHeap::new();
        let next = pull_on_time(entity.as_mut(), &mut late);
        Self { entity, next, late }
    }

    /// The arrival time of this entity's next event.
    fn peek(&self) -> Option<i64> {
        let late = self.late.peek().map(|Reverse(l)| l.arrival_ms);
        let on_time = self.next.as_ref().map(|(t, _)| *t);
        match (late, on_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes the next event: (arrival, timestamp, values).
    fn pop(&mut self) -> Option<(i64, i64, Vec<f64>)> {
        let late_first = match (self.late.peek(), &self.next) {
            (Some(Reverse(l)), Some((t, _))) => l.key() < (*t, *t),
            (Some(_), None) => true,
            _ => false,
        };
        if late_first {
            return self
                .late
                .pop()
                .map(|Reverse(l)| (l.arrival_ms, l.timestamp_ms, l.values));
        }
        let (t, values) = self.next.take()?;
        self.next = pull_on_time(self.entity.as_mut(), &mut self.late);
        Some((t, t, values))
    }
}

/// Pulls ticks until one arrives on time, parking late ones.
fn pull_on_time(
    entity: &mut dyn Entity,
    late: &mut BinaryHeap<Pending>,
) -> Option<(i64, Vec<f64>)> {
    let k = entity.series().len();
    loop {
        let mut values = vec![0.0; k];
        let t = entity.next_tick(&mut values)?;
        if t.arrival_ms == t.timestamp_ms {
            return Some((t.timestamp_ms, values));
        }
        late.push(Reverse(Late {
            arrival_ms: t.arrival_ms,
            timestamp_ms: t.timestamp_ms,
            values,
        }));
    }
}

/// Every sample of a dataset in arrival order. Built by [`super::stream`].
pub struct Stream {
    entities: Vec<EntityStream>,
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    out: VecDeque<Arrival>,
    series_per_entity: u64,
}

impl Stream {
    pub(super) fn new(spec: &DatasetSpec) -> Self {
        let mut entities = Vec::with_capacity(spec.entities as usize);
        let mut heap = BinaryHeap::with_capacity(spec.entities as usize);
        for i in 0..spec.entities {
            let e = EntityStream::new(entity(spec, i));
            if let Some(at) = e.peek() {
                heap.push(Reverse((at, i)));
            }
            entities.push(e);
        }
        Self {
            entities,
            heap,
            out: VecDeque::new(),
            series_per_entity: spec.dataset.series_per_entity() as u64,
        }
    }
}

impl Iterator for Stream {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        if let Some(a) = self.out.pop_front() {
            return Some(a);
        }
        let Reverse((_, i)) = self.heap.pop()?;
        let e = &mut self.entities[i as usize];
        let (arrival_ms, timestamp_ms, values) = e.pop()?;
        for (k, (info, value)) in e.entity.series().iter().zip(values).enumerate() {
            self.out.push_back(Arrival {
                arrival_ms,
                series_index: i * self.series_per_entity + k as u64,
                info: Arc::clone(info),
                sample: Sample::new(timestamp_ms, value),
            });
        }
        if let Some(at) = e.peek() {
            self.heap.push(Reverse((at, i)));
        }
        self.out.pop_front()
    }
}

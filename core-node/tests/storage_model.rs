//! Model-based test of the core's storage through its public API.
//!
//! Random operations — writes from several agents and tenants (some pipelined into one group
//! commit), resends of earlier batches, compactions, reopens of the directory ("crashes"
//! in-process: the handle is dropped while batches may still be queued) and reads — are
//! replayed against [`Storage`] and against a model that is only a `BTreeMap` per
//! (tenant, series): per timestamp the last applied write wins, and a batch with an agent's
//! current epoch and a sequence at or below the last applied one is a duplicate that changes
//! nothing. Every acknowledgement and every read must match the model exactly (values bit for
//! bit). On a mismatch proptest shrinks the operation list and prints it, one op per line.

use core_node::storage::{
    CompactionOptions, Durability, Encryption, Pending, Storage, StorageOptions,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use protocols::wire::{AckOutcome, AgentId, SeriesChunk, WriteBatch};
use protocols::{Labels, Sample, SeriesId, Tenant};
use query::{DataSource, Matcher};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

const DAY_MS: i64 = 86_400_000;
/// Start of the last UTC day representable in i64 milliseconds.
const LAST_DAY_MS: i64 = (i64::MAX / DAY_MS) * DAY_MS;

/// Tenants written to; [`UNUSED_TENANT`] is only ever read. "t" prefixes "t1" on purpose.
const TENANTS: [&str; 3] = ["default", "t", "t1"];
const UNUSED_TENANT: &str = "t2";
/// "edge" prefixes "edge-2" on purpose (agent offsets are stored under a key prefix).
const AGENTS: [&str; 3] = ["edge", "edge-2", "e"];

/// The series pool, identical in every tenant so that isolation is tested. Label names and
/// values prefix each other ("a"/"ab", "1"/"12") to exercise the postings' key prefixes.
const SERIES: [(&str, &[(&str, &str)]); 5] = [
    ("m", &[("a", "1")]),
    ("m", &[("a", "12")]),
    ("m", &[("a", "1"), ("ab", "x")]),
    ("n", &[("b", "y")]),
    ("temp", &[("site", "s1"), ("device", "d1")]),
];

/// Label names whose values are listed in index checks ("zz" is never used).
const LABEL_NAMES: [&str; 7] = ["__name__", "a", "ab", "b", "site", "device", "zz"];

/// Selectors for `select_series`: (operator, name, value) per matcher.
const SELECTORS: [&[(&str, &str, &str)]; 8] = [
    &[("=~", "a", "1.*")],
    &[("=~", "a", "1|12")],
    &[("=~", "__name__", "m|n")],
    // Matches the empty string: no posting narrows it, every series of the tenant qualifies.
    &[("=~", "b", ".*")],
    &[("!~", "a", "1")],
    &[("=", "__name__", "m"), ("=~", "ab", ".+")],
    &[("=", "a", "1"), ("!=", "ab", "x")],
    &[("=~", "site", "s."), ("=", "device", "d1")],
];

/// Timestamps that make interesting neighbours: i64 extremes, UTC midnights (±1 ms), negative
/// times, the far past (year 1) and far future (year 9999), and the last representable day.
const TS_ANCHORS: [i64; 20] = [
    i64::MIN,
    i64::MIN + 1,
    -62_135_596_800_000,
    -DAY_MS - 1,
    -DAY_MS,
    -1,
    0,
    1,
    DAY_MS - 1,
    DAY_MS,
    19_000 * DAY_MS - 1,
    19_000 * DAY_MS,
    19_000 * DAY_MS + 1,
    19_001 * DAY_MS,
    1_700_000_000_000,
    253_402_300_799_999,
    LAST_DAY_MS - 1,
    LAST_DAY_MS,
    i64::MAX - 1,
    i64::MAX,
];

/// Values whose bits are easy to lose: NaN payloads, signed zero, infinities, extremes.
const SPECIAL_BITS: [u64; 10] = [
    0x7ff0_0000_0000_0002, // Prometheus' stale marker
    0x7ff8_0000_0000_0000, // quiet NaN
    0xfff8_0000_0000_0001, // negative NaN with a payload
    0x7ff4_0000_0000_0000, // signalling NaN
    0x8000_0000_0000_0000, // -0.0
    0,                     // 0.0
    0x7ff0_0000_0000_0000, // +inf
    0xfff0_0000_0000_0000, // -inf
    1,                     // smallest subnormal
    0x7fef_ffff_ffff_ffff, // f64::MAX
];

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// A value as its bits, printed so that NaN payloads and -0.0 are visible.
#[derive(Clone, Copy, PartialEq, Eq)]
struct V(u64);

impl fmt::Debug for V {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = f64::from_bits(self.0);
        if v.is_nan() {
            write!(f, "NaN({:#018x})", self.0)
        } else {
            write!(f, "{v:?}")
        }
    }
}

#[derive(Clone)]
struct WriteOp {
    agent: usize,
    epoch: u64,
    seq: u64,
    tenant: usize,
    /// Series index and samples in the order sent; a series may appear twice in one batch.
    series: Vec<(usize, Vec<(i64, V)>)>,
    /// Submitted without waiting for the answer, so it may share a group commit with the next
    /// ones (and be queued when the handle is dropped).
    pipelined: bool,
}

impl fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "agent={} epoch={} seq={} tenant={}{}",
            AGENTS[self.agent],
            self.epoch,
            self.seq,
            TENANTS[self.tenant],
            if self.pipelined { " pipelined" } else { "" }
        )?;
        for (s, samples) in &self.series {
            write!(f, " {}:[", labels(*s))?;
            for (i, (ts, v)) in samples.iter().enumerate() {
                if i == 12 {
                    write!(f, " …{} more", samples.len() - i)?;
                    break;
                }
                write!(f, "{}{ts}={v:?}", if i == 0 { "" } else { " " })?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum CompactKind {
    /// Every day that ended before now, however few chunks it has.
    SealPastDays,
    /// Days with at least two chunks since their last merge, including future ones.
    MergeAfterTwo,
    /// Every dirty day.
    MergeAll,
}

impl CompactKind {
    fn options(self) -> CompactionOptions {
        let (merge_after_chunks, seal_after) = match self {
            Self::SealPastDays => (u32::MAX, Duration::ZERO),
            Self::MergeAfterTwo => (2, Duration::from_secs(1 << 40)),
            Self::MergeAll => (1, Duration::ZERO),
        };
        CompactionOptions {
            interval: Duration::from_secs(3600),
            merge_after_chunks,
            seal_after,
        }
    }
}

#[derive(Clone)]
enum Op {
    Write(WriteOp),
    /// Submit an earlier batch again (index modulo the number of earlier batches).
    Resend(usize),
    Compact(CompactKind),
    /// Drop the handle (queued batches included) and open the directory again.
    Reopen,
    /// Tenant index up to `TENANTS.len()` (that one is [`UNUSED_TENANT`]).
    ReadRange {
        tenant: usize,
        series: usize,
        start_ms: i64,
        end_ms: i64,
    },
    ReadIndex {
        tenant: usize,
        selector: usize,
        label: usize,
    },
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Write(w) => write!(f, "Write {w:?}"),
            Self::Resend(pick) => write!(f, "Resend(earlier batch {pick} modulo their number)"),
            Self::Compact(kind) => write!(f, "Compact({kind:?})"),
            Self::Reopen => write!(f, "Reopen"),
            Self::ReadRange {
                tenant: t,
                series,
                start_ms,
                end_ms,
            } => write!(
                f,
                "ReadRange tenant={} {} [{start_ms}, {end_ms}]",
                tenant(*t),
                labels(*series)
            ),
            Self::ReadIndex {
                tenant: t,
                selector,
                label,
            } => write!(
                f,
                "ReadIndex tenant={} select {} label_values({})",
                tenant(*t),
                selector_text(*selector),
                LABEL_NAMES[*label]
            ),
        }
    }
}

/// The op list, printed one op per line with its index (the indices errors refer to).
#[derive(Clone)]
struct Ops(Vec<Op>);

impl fmt::Debug for Ops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[")?;
        for (i, op) in self.0.iter().enumerate() {
            writeln!(f, "  #{i:<2} {op:?}")?;
        }
        write!(f, "]")
    }
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => select(&TS_ANCHORS[..]),
        2 => (select(&TS_ANCHORS[..]), -2i64..=2).prop_map(|(t, d)| t.saturating_add(d)),
    ]
}

fn value() -> impl Strategy<Value = V> {
    prop_oneof![
        3 => select(&SPECIAL_BITS[..]),
        3 => (-3i32..=3).prop_map(|i| f64::from(i).to_bits()),
        1 => (0u32..1000).prop_map(|i| (f64::from(i) / 10.0).to_bits()),
        2 => any::<u64>(),
    ]
    .prop_map(V)
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    let series = (
        0..SERIES.len(),
        prop::collection::vec((timestamp(), value()), 1..=6),
    );
    (
        0..AGENTS.len(),
        1u64..=3,
        0u64..=6,
        0..TENANTS.len(),
        prop::collection::vec(series, 1..=3),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(agent, epoch, seq, tenant, series, pipelined)| WriteOp {
            agent,
            epoch,
            seq,
            tenant,
            series,
            pipelined,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let compact = prop_oneof![
        Just(CompactKind::SealPastDays),
        Just(CompactKind::MergeAfterTwo),
        Just(CompactKind::MergeAll),
    ];
    let read_range = (0..=TENANTS.len(), 0..SERIES.len(), timestamp(), timestamp()).prop_map(
        |(tenant, series, start_ms, end_ms)| Op::ReadRange {
            tenant,
            series,
            start_ms,
            end_ms,
        },
    );
    let read_index = (0..=TENANTS.len(), 0..SELECTORS.len(), 0..LABEL_NAMES.len()).prop_map(
        |(tenant, selector, label)| Op::ReadIndex {
            tenant,
            selector,
            label,
        },
    );
    prop_oneof![
        10 => write_op().prop_map(Op::Write),
        2 => any::<usize>().prop_map(Op::Resend),
        2 => compact.prop_map(Op::Compact),
        1 => Just(Op::Reopen),
        3 => read_range,
        2 => read_index,
    ]
}

// ---------------------------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------------------------

fn labels(series: usize) -> Labels {
    let (metric, pairs) = SERIES[series];
    Labels::from_metric(metric, pairs.iter().copied()).expect("pool labels are valid")
}

fn tenant(i: usize) -> Tenant {
    Tenant::new(TENANTS.get(i).copied().unwrap_or(UNUSED_TENANT)).expect("pool tenants are valid")
}

/// The matchers of `SELECTORS[i]`, compiled once (regex compilation dominates a debug build's
/// index checks otherwise).
fn selector(i: usize) -> &'static [Matcher] {
    static COMPILED: OnceLock<Vec<Vec<Matcher>>> = OnceLock::new();
    let compiled = COMPILED.get_or_init(|| {
        SELECTORS
            .iter()
            .map(|selector| {
                selector
                    .iter()
                    .map(|(op, name, value)| match *op {
                        "=" => Matcher::equal(*name, *value),
                        "!=" => Matcher::not_equal(*name, *value),
                        "=~" => Matcher::regex(*name, value).expect("pool regexes are valid"),
                        _ => Matcher::not_regex(*name, value).expect("pool regexes are valid"),
                    })
                    .collect()
            })
            .collect()
    });
    &compiled[i]
}

fn selector_text(i: usize) -> String {
    let parts: Vec<String> = SELECTORS[i]
        .iter()
        .map(|(op, name, value)| format!("{name}{op}{value:?}"))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn batch(w: &WriteOp) -> Result<WriteBatch, String> {
    let series = w
        .series
        .iter()
        .map(|(s, samples)| {
            let samples = samples
                .iter()
                .map(|(ts, v)| Sample::new(*ts, f64::from_bits(v.0)))
                .collect();
            SeriesChunk::encode(labels(*s), samples).map_err(|e| format!("encoding a chunk: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WriteBatch {
        agent_id: AgentId(AGENTS[w.agent].to_owned()),
        epoch: w.epoch,
        sequence: w.seq,
        tenant: tenant(w.tenant),
        series,
    })
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The acknowledgement the model expects: every series of the pool is within the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    Stored { samples: u64 },
    Duplicate,
}

impl Ack {
    fn of(outcome: &AckOutcome) -> Option<Self> {
        match outcome {
            AckOutcome::Stored {
                samples,
                rejected_series: 0,
                ..
            } => Some(Self::Stored { samples: *samples }),
            AckOutcome::Duplicate => Some(Self::Duplicate),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Model {
    /// (tenant, series) → timestamp → value bits.
    samples: BTreeMap<(usize, usize), BTreeMap<i64, u64>>,
    /// Series that some applied batch carried: the ones the index must list.
    created: BTreeSet<(usize, usize)>,
    /// Agent → last applied (epoch, sequence).
    offsets: HashMap<usize, (u64, u64)>,
}

impl Model {
    fn apply(&mut self, w: &WriteOp) -> Ack {
        if let Some(&(epoch, seq)) = self.offsets.get(&w.agent)
            && epoch == w.epoch
            && w.seq <= seq
        {
            return Ack::Duplicate;
        }
        let mut stored = 0;
        for (s, samples) in &w.series {
            self.created.insert((w.tenant, *s));
            let series = self.samples.entry((w.tenant, *s)).or_default();
            let distinct: BTreeSet<i64> = samples.iter().map(|(ts, _)| *ts).collect();
            stored += distinct.len() as u64;
            for (ts, v) in samples {
                series.insert(*ts, v.0);
            }
        }
        self.offsets.insert(w.agent, (w.epoch, w.seq));
        Ack::Stored { samples: stored }
    }

    fn range(&self, tenant: usize, series: usize, start_ms: i64, end_ms: i64) -> Vec<Sample> {
        match self.samples.get(&(tenant, series)) {
            Some(m) if start_ms <= end_ms => m
                .range(start_ms..=end_ms)
                .map(|(ts, v)| Sample::new(*ts, f64::from_bits(*v)))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn series_of(&self, tenant: usize) -> impl Iterator<Item = usize> + '_ {
        self.created
            .iter()
            .filter(move |(t, _)| *t == tenant)
            .map(|(_, s)| *s)
    }

    fn select(&self, tenant: usize, selector_idx: usize) -> Vec<String> {
        let matchers = selector(selector_idx);
        let mut out: Vec<String> = self
            .series_of(tenant)
            .map(labels)
            .filter(|l| {
                matchers
                    .iter()
                    .all(|m| m.matches(l.get(&m.name).unwrap_or_default()))
            })
            .map(|l| l.to_string())
            .collect();
        out.sort();
        out
    }

    fn label_values(&self, tenant: usize, name: &str) -> Vec<String> {
        let values: BTreeSet<String> = self
            .series_of(tenant)
            .filter_map(|s| labels(s).get(name).map(str::to_owned))
            .collect();
        values.into_iter().collect()
    }

    fn label_names(&self, tenant: usize) -> Vec<String> {
        let names: BTreeSet<String> = self
            .series_of(tenant)
            .flat_map(|s| labels(s).iter().map(|l| l.name.clone()).collect::<Vec<_>>())
            .collect();
        names.into_iter().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons with readable differences
// ---------------------------------------------------------------------------------------------

fn compare_samples(what: &str, expected: &[Sample], actual: &[Sample]) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    let mut lines = Vec::new();
    if let Some(w) = actual
        .windows(2)
        .find(|w| w[0].timestamp_ms >= w[1].timestamp_ms)
    {
        lines.push(format!(
            "not strictly ascending: {} then {}",
            w[0].timestamp_ms, w[1].timestamp_ms
        ));
    }
    let exp: BTreeMap<i64, u64> = expected
        .iter()
        .map(|s| (s.timestamp_ms, s.value.to_bits()))
        .collect();
    let act: BTreeMap<i64, u64> = actual
        .iter()
        .map(|s| (s.timestamp_ms, s.value.to_bits()))
        .collect();
    let all: BTreeSet<i64> = exp.keys().chain(act.keys()).copied().collect();
    for ts in all {
        match (exp.get(&ts), act.get(&ts)) {
            (Some(e), None) => lines.push(format!("missing {ts}={:?}", V(*e))),
            (None, Some(a)) => lines.push(format!("unexpected {ts}={:?}", V(*a))),
            (Some(e), Some(a)) if e != a => {
                lines.push(format!("at {ts}: expected {:?}, got {:?}", V(*e), V(*a)))
            }
            _ => {}
        }
    }
    let more = lines.len().saturating_sub(20);
    lines.truncate(20);
    if more > 0 {
        lines.push(format!("… {more} more differences"));
    }
    Err(format!(
        "{what}: {} samples expected, {} read:\n    {}",
        expected.len(),
        actual.len(),
        lines.join("\n    ")
    ))
}

fn compare<T: PartialEq + fmt::Debug>(what: &str, expected: &T, actual: &T) -> Result<(), String> {
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{what}:\n    expected {expected:?}\n    read     {actual:?}"
        ))
    }
}

fn read_samples(
    s: &Storage,
    m: &Model,
    t: usize,
    series: usize,
    start_ms: i64,
    end_ms: i64,
) -> Result<(), String> {
    let id = SeriesId::of(&tenant(t), &labels(series));
    let actual = s
        .samples(id, start_ms, end_ms)
        .map_err(|e| format!("samples of {}: {e}", labels(series)))?;
    let what = format!(
        "samples of {} in tenant {} over [{start_ms}, {end_ms}]",
        labels(series),
        tenant(t)
    );
    compare_samples(&what, &m.range(t, series, start_ms, end_ms), &actual)
}

fn read_select(s: &Storage, m: &Model, t: usize, selector_idx: usize) -> Result<(), String> {
    let tn = tenant(t);
    let refs = s
        .select_series(&tn, selector(selector_idx))
        .map_err(|e| format!("select_series: {e}"))?;
    for r in &refs {
        if r.id != SeriesId::of(&tn, &r.labels) {
            return Err(format!(
                "select_series returned {} under a wrong id",
                r.labels
            ));
        }
    }
    let mut actual: Vec<String> = refs.iter().map(|r| r.labels.to_string()).collect();
    actual.sort();
    let what = format!(
        "select_series {} in tenant {tn}",
        selector_text(selector_idx)
    );
    compare(&what, &m.select(t, selector_idx), &actual)
}

fn read_label_values(s: &Storage, m: &Model, t: usize, name: &str) -> Result<(), String> {
    let tn = tenant(t);
    let actual = s
        .label_values(&tn, name)
        .map_err(|e| format!("label_values: {e}"))?;
    let what = format!("label_values({name}) in tenant {tn}");
    compare(&what, &m.label_values(t, name), &actual)
}

fn read_label_names(s: &Storage, m: &Model, t: usize) -> Result<(), String> {
    let tn = tenant(t);
    let actual = s
        .label_names(&tn)
        .map_err(|e| format!("label_names: {e}"))?;
    compare(
        &format!("label_names in tenant {tn}"),
        &m.label_names(t),
        &actual,
    )
}

/// Everything a reader can see: every series of every tenant over all of time, and the index.
fn check_all(s: &Storage, m: &Model) -> Result<(), String> {
    for t in 0..=TENANTS.len() {
        for series in 0..SERIES.len() {
            read_samples(s, m, t, series, i64::MIN, i64::MAX)?;
        }
        read_label_names(s, m, t)?;
        for name in LABEL_NAMES {
            read_label_values(s, m, t, name)?;
        }
        for selector_idx in 0..SELECTORS.len() {
            read_select(s, m, t, selector_idx)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    stored: usize,
    duplicates: usize,
    /// Days the compactions merged.
    merged: usize,
    /// Batches still queued when the handle was dropped.
    queued_at_drop: usize,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.stored += o.stored;
        self.duplicates += o.duplicates;
        self.merged += o.merged;
        self.queued_at_drop += o.queued_at_drop;
    }
}

struct InFlight {
    op: usize,
    rx: Pending,
    expected: Ack,
}

/// A directory for one case, on tmpfs where there is one: opening a fresh storage costs a few
/// fsyncs, which on a busy disk take most of the test's time (and of a failure's shrinking),
/// and nothing here depends on the disk.
fn scratch_dir() -> Result<tempfile::TempDir, String> {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("storage-model")
            .tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.map_err(|e| format!("temporary directory: {e}"))
}

fn open(dir: &Path, encryption: Option<&Encryption>) -> Result<Storage, String> {
    let options = StorageOptions {
        encryption: encryption.cloned(),
        // No fsync per group commit: the test reopens in-process, where what the OS holds is
        // what a reopen reads back; fsyncs would only slow it down.
        durability: Durability::Buffered,
        compaction: CompactionOptions {
            interval: Duration::from_secs(3600),
            ..CompactionOptions::default()
        },
        // A small head flushes often, so reads see samples both in the head and in fjall;
        // without the flush on stop, every reopen replays the head from the WAL, as after a
        // crash.
        head_max_samples: 5,
        flush_head_on_stop: false,
        ..StorageOptions::default()
    };
    Storage::open(dir, options).map_err(|e| format!("opening storage: {e}"))
}

/// Waits for every submitted batch's answer and compares it with the model's.
fn drain(pending: &mut Vec<InFlight>, stats: &mut Stats) -> Result<(), String> {
    for f in pending.drain(..) {
        let got =
            f.rx.blocking_recv()
                .map_err(|_| format!("batch of op #{} was dropped without an answer", f.op))?
                .map_err(|e| format!("batch of op #{} failed: {e}", f.op))?;
        if Ack::of(&got) != Some(f.expected) {
            return Err(format!(
                "batch of op #{} answered {got:?}, the model expects {:?}",
                f.op, f.expected
            ));
        }
        match f.expected {
            Ack::Duplicate => stats.duplicates += 1,
            Ack::Stored { .. } => stats.stored += 1,
        }
    }
    Ok(())
}

/// A storage directory under test, the model it must agree with, and what is in flight.
struct Harness {
    dir: tempfile::TempDir,
    /// `None` only while a reopen is in progress.
    storage: Option<Storage>,
    model: Model,
    stats: Stats,
    /// Every batch submitted so far, for resends.
    history: Vec<WriteOp>,
    pending: Vec<InFlight>,
    /// The data keys every open uses when the case runs with encryption at rest.
    encryption: Option<Encryption>,
}

impl Harness {
    fn new(encryption: Option<Encryption>) -> Result<Self, String> {
        let dir = scratch_dir()?;
        let storage = Some(open(dir.path(), encryption.as_ref())?);
        Ok(Self {
            dir,
            storage,
            model: Model::default(),
            stats: Stats::default(),
            history: Vec::new(),
            pending: Vec::new(),
            encryption,
        })
    }

    fn storage(&self) -> Result<&Storage, String> {
        self.storage
            .as_ref()
            .ok_or_else(|| "storage is closed".to_owned())
    }

    fn write(&mut self, i: usize, w: WriteOp) -> Result<(), String> {
        let expected = self.model.apply(&w);
        let rx = self
            .storage()?
            .submit(batch(&w)?)
            .map_err(|e| format!("submit: {e}"))?;
        self.pending.push(InFlight {
            op: i,
            rx,
            expected,
        });
        let pipelined = w.pipelined;
        self.history.push(w);
        if pipelined {
            Ok(())
        } else {
            drain(&mut self.pending, &mut self.stats)
        }
    }

    fn step(&mut self, i: usize, op: &Op) -> Result<(), String> {
        match op {
            Op::Write(w) => return self.write(i, w.clone()),
            Op::Resend(pick) => {
                let Some(earlier) = self.history.get(pick % self.history.len().max(1)) else {
                    return Ok(());
                };
                let w = WriteOp {
                    pipelined: false,
                    ..earlier.clone()
                };
                return self.write(i, w);
            }
            Op::Reopen => {
                // Batches still queued must be committed and answered by the time the last
                // handle is gone; then everything acknowledged must be read back.
                self.stats.queued_at_drop += self.pending.len();
                self.storage = None;
                drain(&mut self.pending, &mut self.stats)?;
                self.storage = Some(open(self.dir.path(), self.encryption.as_ref())?);
                return check_all(self.storage()?, &self.model);
            }
            _ => {}
        }
        drain(&mut self.pending, &mut self.stats)?;
        let (s, m) = (self.storage()?, &self.model);
        match op {
            Op::Compact(kind) => {
                let merged = s
                    .compact_now(&kind.options())
                    .map_err(|e| format!("compact_now: {e}"))?;
                check_all(s, m)?;
                self.stats.merged += merged;
                Ok(())
            }
            Op::ReadRange {
                tenant,
                series,
                start_ms,
                end_ms,
            } => read_samples(s, m, *tenant, *series, *start_ms, *end_ms),
            Op::ReadIndex {
                tenant,
                selector,
                label,
            } => {
                read_select(s, m, *tenant, *selector)?;
                read_label_values(s, m, *tenant, LABEL_NAMES[*label])?;
                read_label_names(s, m, *tenant)
            }
            Op::Write(_) | Op::Resend(_) | Op::Reopen => Ok(()),
        }
    }
}

/// Replays `ops` against a fresh storage and the model; the error names the op that diverged.
fn run(ops: &[Op]) -> Result<Stats, String> {
    run_with(ops, None)
}

/// [`run`], with encryption at rest when `encryption` is given.
fn run_with(ops: &[Op], encryption: Option<Encryption>) -> Result<Stats, String> {
    let mut h = Harness::new(encryption)?;
    for (i, op) in ops.iter().enumerate() {
        h.step(i, op)
            .map_err(|e| format!("at op #{i} {op:?}: {e}"))?;
    }
    drain(&mut h.pending, &mut h.stats).map_err(|e| format!("at the end: {e}"))?;
    check_all(h.storage()?, &h.model).map_err(|e| format!("at the end: {e}"))?;
    Ok(h.stats)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// The property: whatever the operations, storage answers exactly as the model does.
#[test]
fn storage_agrees_with_a_last_write_wins_model() {
    check_property(cases(), || None);
}

/// The same property with encryption at rest (sealed values, hashed posting keys, the
/// encrypted label dictionary), on half as many cases.
#[test]
fn encrypted_storage_agrees_with_a_last_write_wins_model() {
    let keys = tempfile::tempdir().expect("tempdir");
    let master = crypt::MasterKey::generate().expect("random");
    let ring = crypt::Keyring::create(keys.path(), &master, crypt::CORE_STORES).expect("keyring");
    let encryption = Encryption::from_keyring(&ring).expect("keys");
    check_property(cases().div_ceil(2), || Some(encryption.clone()));
}

fn check_property(cases: u32, encryption: impl Fn() -> Option<Encryption>) {
    let config = Config {
        cases,
        max_shrink_iters: 4096,
        // A failure shrinks for at most this long (ms), then reports the smallest list so far.
        max_shrink_time: 60_000,
        // A failure prints its op list; it becomes a deterministic test below rather than a
        // seed in a regressions file.
        failure_persistence: None,
        ..Config::default()
    };
    let ops = prop::collection::vec(op(), 1..=40).prop_map(Ops);
    let totals = Cell::new(Stats::default());
    let result = TestRunner::new(config).run(&ops, |ops| {
        let stats = run_with(&ops.0, encryption()).map_err(TestCaseError::fail)?;
        let mut t = totals.get();
        t.add(stats);
        totals.set(t);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Guards against a generator that silently stops exercising the interesting paths.
    let t = totals.get();
    assert!(
        t.stored > 0 && t.duplicates > 0 && t.merged > 0 && t.queued_at_drop > 0,
        "the generated operations missed a path: {t:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Targeted cases the generator rarely reaches
// ---------------------------------------------------------------------------------------------

fn write(agent: usize, epoch: u64, seq: u64, series: Vec<(usize, Vec<(i64, V)>)>) -> Op {
    Op::Write(WriteOp {
        agent,
        epoch,
        seq,
        tenant: 0,
        series,
        pipelined: false,
    })
}

fn run_or_panic(ops: Vec<Op>) -> Stats {
    match run(&ops) {
        Ok(stats) => stats,
        Err(e) => panic!("{e}\nops: {:?}", Ops(ops)),
    }
}

const STALE: V = V(0x7ff0_0000_0000_0002);

/// The smallest case the property found: after a restart the WAL replays every batch since
/// the last checkpoint, and a batch whose agent has since moved to another epoch is not
/// recognised as already applied, so it is applied again with a newer write sequence and its
/// older value beats the later write of another agent to the same timestamp.
#[test]
fn a_restart_keeps_the_last_write_when_an_agent_changed_epoch_since() {
    let temp = 4;
    let stats = run_or_panic(vec![
        write(0, 2, 0, vec![(temp, vec![(1, V(0))])]),
        write(1, 2, 0, vec![(temp, vec![(1, STALE)])]),
        write(0, 1, 0, vec![(0, vec![(5, V(0))])]),
        Op::ReadRange {
            tenant: 0,
            series: temp,
            start_ms: 1,
            end_ms: 1,
        },
        Op::Reopen,
    ]);
    assert_eq!(stats.stored, 3);
}

/// Found by the property: a batch answered `Duplicate` (same agent, epoch and sequence as
/// one already applied, different content) must change nothing, also after a restart. The
/// WAL logs it like any batch; once the agent has moved to another epoch, the replay no longer
/// sees it as a duplicate and applies it.
#[test]
fn a_batch_answered_duplicate_changes_nothing_after_a_restart() {
    let (m, n) = (0, 3);
    let stats = run_or_panic(vec![
        write(0, 1, 1, vec![(m, vec![(0, V(1.0f64.to_bits()))])]),
        // Checkpoints the WAL: the duplicate below is the first record the next replay reads.
        Op::Reopen,
        write(0, 1, 1, vec![(m, vec![(0, V(2.0f64.to_bits()))])]),
        write(0, 2, 1, vec![(n, vec![(0, V(0))])]),
        Op::Reopen,
    ]);
    assert_eq!((stats.stored, stats.duplicates), (2, 1));
}

/// A day with more samples than one sealed block holds (65,536) is merged into several blocks;
/// overlapping writes before and after the merge keep the last value, across a restart.
#[test]
fn compacting_a_day_denser_than_one_block_changes_no_read() {
    let day = 19_000 * DAY_MS;
    let first: Vec<(i64, V)> = (0..70_000i64)
        .map(|i| (day + i * 1000, V((i as f64).to_bits())))
        .collect();
    // Overlaps the second half of the first and runs to the day's last millisecond.
    let mut second: Vec<(i64, V)> = (60_000..86_400i64)
        .map(|i| (day + i * 1000, V((-(i as f64) / 4.0).to_bits())))
        .collect();
    second.push((day + DAY_MS - 1, STALE));
    let ops = vec![
        write(0, 1, 1, vec![(0, first)]),
        write(0, 1, 2, vec![(0, second)]),
        Op::Compact(CompactKind::SealPastDays),
        // Beats the merged blocks at both ends of the day and at the block boundary.
        write(
            1,
            1,
            1,
            vec![(
                0,
                vec![
                    (day, V(1)),
                    (day + 65_536 * 1000, STALE),
                    (day + DAY_MS - 1, V(0x8000_0000_0000_0000)),
                    (day + DAY_MS, V(7)),
                ],
            )],
        ),
        Op::Compact(CompactKind::MergeAll),
        Op::ReadRange {
            tenant: 0,
            series: 0,
            start_ms: day + 65_535 * 1000,
            end_ms: day + 65_537 * 1000,
        },
        Op::Reopen,
    ];
    let stats = run_or_panic(ops);
    assert!(stats.merged >= 2, "both compactions merged: {stats:?}");
}

/// Values that a decimal or XOR encoder could lose (NaN payloads, -0.0, subnormals, ±inf)
/// among easy decimals, at codec block edges (128 samples), survive the agent's encoding,
/// the compactor's re-encoding of the merged day and a restart.
#[test]
fn special_values_survive_recompression_at_codec_block_edges() {
    let day = 19_000 * DAY_MS;
    let special = |i: i64| SPECIAL_BITS[(i as usize) % SPECIAL_BITS.len()];
    let edges = [0, 1, 126, 127, 128, 129, 255, 256, 257, 299];
    let first: Vec<(i64, V)> = (0..300i64)
        .map(|i| {
            let bits = if edges.contains(&i) {
                special(i)
            } else {
                (i as f64 / 10.0).to_bits()
            };
            (day + i * 15_000, V(bits))
        })
        .collect();
    // Every seventh sample overwritten with another special value, plus samples in between.
    let second: Vec<(i64, V)> = (0..300i64)
        .filter(|i| i % 7 == 0)
        .flat_map(|i| {
            [
                (day + i * 15_000, V(special(i + 3))),
                (day + i * 15_000 + 1, V(special(i + 5))),
            ]
        })
        .collect();
    let mut ops = vec![
        write(0, 1, 1, vec![(3, first)]),
        write(0, 1, 2, vec![(3, second)]),
        Op::Compact(CompactKind::MergeAll),
    ];
    for edge in [127, 128, 255, 256] {
        ops.push(Op::ReadRange {
            tenant: 0,
            series: 3,
            start_ms: day + edge * 15_000,
            end_ms: day + (edge + 1) * 15_000,
        });
    }
    ops.push(Op::Reopen);
    let stats = run_or_panic(ops);
    assert_eq!(stats.merged, 1, "the day was re-encoded: {stats:?}");
}

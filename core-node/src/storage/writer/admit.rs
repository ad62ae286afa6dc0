//! Admission: the decisions about a write that read the clock, the node's settings or
//! node-wide counters, taken once when the write is accepted and before it is logged.
//!
//! - **Limits** (`--max-labels-per-series`, label name and value lengths,
//!   `--max-series-per-tenant`): a series over one is refused. The series count is the
//!   committed one plus the new series admitted earlier in the same group.
//! - **Retention**: a series whose every sample is older than its tenant's retention at the
//!   writer's clock is refused.
//! - **Duplicates**: an agent batch at or below the agent's last applied `(epoch, sequence)`
//!   is answered `duplicate` without being logged (applying it would change nothing).
//!
//! A refused series is taken out of the batch, so the WAL record holds only what was admitted
//! and [`super::apply`] never refuses a series for these reasons: a replay after a restart
//! with a lower limit or a later clock, or another replica with other settings, stores exactly
//! what was acknowledged.

use super::super::record::Batch;
use super::Writer;
use super::apply::Applied;
use foldhash::{HashMap, HashSet};
use protocols::{Labels, SeriesId, Tenant, codec};

/// What admission decided about one write request.
pub(super) struct Verdict {
    /// Already applied: answered `duplicate`, neither logged nor applied.
    pub duplicate: bool,
    /// Nothing left to log (every series refused, no agent offset to record).
    pub empty: bool,
    /// Refusals so far, to which applying adds its own.
    pub applied: Applied,
    /// The ids of the series left in the batch, in order: applying the live batch does not
    /// hash every label set a second time (a replay computes them).
    pub ids: Vec<SeriesId>,
}

/// Admission's view of the group so far: what earlier requests of the group were admitted.
#[derive(Default)]
pub(super) struct GroupAdmission {
    new_series: HashSet<SeriesId>,
    new_per_tenant: HashMap<Tenant, u64>,
    offsets: HashMap<String, (u64, u64)>,
}

/// Keeps the series admission let through (`keep` holds one entry per series) and returns
/// their ids, in order.
fn retain_admitted<T>(series: &mut Vec<T>, keep: Vec<Option<SeriesId>>) -> Vec<SeriesId> {
    let mut verdicts = keep.iter();
    series.retain(|_| verdicts.next().is_some_and(Option::is_some));
    keep.into_iter().flatten().collect()
}

impl Writer {
    /// Admits one write: strips the series the limits or retention refuse from `batch`.
    /// `scope` is whose agent offsets judge duplicates: the node's log, or a shard group.
    pub(super) fn admit(&self, scope: u64, g: &mut GroupAdmission, batch: &mut Batch) -> Verdict {
        let now_ms = self.clock.now_ms();
        match batch {
            Batch::Chunks(b) => {
                let tracked = !b.agent_id.is_untracked();
                let agent = b.agent_id.0.clone();
                let last = g
                    .offsets
                    .get(&agent)
                    .copied()
                    .or_else(|| self.committed_offset(scope, &agent));
                if tracked
                    && matches!(last, Some((epoch, seq)) if epoch == b.epoch && b.sequence <= seq)
                {
                    return Verdict {
                        duplicate: true,
                        empty: true,
                        applied: Applied::new(&agent),
                        ids: Vec::new(),
                    };
                }
                let mut applied = Applied::new(&agent);
                if tracked {
                    g.offsets.insert(agent, (b.epoch, b.sequence));
                }
                let tenant = &b.tenant;
                let keep: Vec<Option<SeriesId>> = b
                    .series
                    .iter()
                    .map(|s| {
                        // A damaged header is left to apply, which refuses the chunk the same
                        // way everywhere; retention needs only the newest timestamp.
                        let newest = codec::header(&s.chunk).map_or(i64::MAX, |h| h.max_ts);
                        self.admit_series(g, tenant, &s.labels, newest, now_ms, &mut applied)
                    })
                    .collect();
                let ids = retain_admitted(&mut b.series, keep);
                let empty = !tracked && b.series.is_empty();
                Verdict {
                    duplicate: false,
                    empty,
                    applied,
                    ids,
                }
            }
            Batch::Samples(b) => {
                let mut applied = Applied::new("");
                let tenant = &b.tenant;
                let keep: Vec<Option<SeriesId>> = b
                    .series
                    .iter()
                    .map(|(labels, samples)| {
                        let newest = samples.last().map_or(i64::MIN, |s| s.timestamp_ms);
                        self.admit_series(g, tenant, labels, newest, now_ms, &mut applied)
                    })
                    .collect();
                let ids = retain_admitted(&mut b.series, keep);
                Verdict {
                    duplicate: false,
                    empty: b.series.is_empty(),
                    applied,
                    ids,
                }
            }
        }
    }

    /// The series' id when it may be written; a refusal is counted in `applied`.
    fn admit_series(
        &self,
        g: &mut GroupAdmission,
        tenant: &Tenant,
        labels: &Labels,
        newest_ms: i64,
        now_ms: i64,
        applied: &mut Applied,
    ) -> Option<SeriesId> {
        let id = SeriesId::of(tenant, labels);
        let is_new = !self.known.contains(&id) && !g.new_series.contains(&id);
        if let Err((reason, message)) = self.check_limits(g, tenant, labels, is_new) {
            applied.reject(reason, message, labels);
            return None;
        }
        if let Some(cutoff) = self
            .retention
            .cutoff(tenant, now_ms)
            .filter(|c| newest_ms < *c)
        {
            applied.reject(
                "out_of_retention",
                format!("every sample is older than the tenant's retention ({cutoff} ms)"),
                labels,
            );
            return None;
        }
        if is_new {
            g.new_series.insert(id);
            *g.new_per_tenant.entry(tenant.clone()).or_default() += 1;
        }
        Some(id)
    }

    /// Why `labels` may not be written under the limits, as (counter reason, message).
    fn check_limits(
        &self,
        g: &GroupAdmission,
        tenant: &Tenant,
        labels: &Labels,
        is_new: bool,
    ) -> Result<(), (&'static str, String)> {
        let l = &self.limits;
        if labels.len() > l.max_labels_per_series {
            return Err((
                "too_many_labels",
                format!(
                    "{} labels, more than the limit of {}",
                    labels.len(),
                    l.max_labels_per_series
                ),
            ));
        }
        for label in labels.iter() {
            if label.name.len() > l.max_label_name_bytes {
                return Err((
                    "label_name_too_long",
                    format!(
                        "label name of {} bytes, more than the limit of {}",
                        label.name.len(),
                        l.max_label_name_bytes
                    ),
                ));
            }
            if label.value.len() > l.max_label_value_bytes {
                return Err((
                    "label_value_too_long",
                    format!(
                        "value of label {:?} has {} bytes, more than the limit of {}",
                        label.name,
                        label.value.len(),
                        l.max_label_value_bytes
                    ),
                ));
            }
        }
        if is_new {
            let have = self.tenant_series.get(tenant).copied().unwrap_or_default()
                + g.new_per_tenant.get(tenant).copied().unwrap_or_default();
            if have >= l.max_series_per_tenant {
                return Err((
                    "series_limit",
                    format!(
                        "tenant {tenant} has {have} series, the limit; no new series are created"
                    ),
                ));
            }
        }
        Ok(())
    }
}

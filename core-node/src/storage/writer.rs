//! The single writer thread: group commit of queued batches (see the module docs of
//! [`super`] for the protocol).

use super::{Keyspaces, StorageError, StorageOptions, keys};
use fjall::PersistMode;
use protocols::SeriesId;
use protocols::wire::{AckOutcome, WriteBatch};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Most samples one group commit gathers before it commits.
const GROUP_MAX_SAMPLES: usize = 500_000;

pub(crate) struct Request {
    pub batch: WriteBatch,
    pub reply: oneshot::Sender<Result<AckOutcome, Arc<StorageError>>>,
}

struct Writer {
    ks: Arc<Keyspaces>,
    mode: PersistMode,
    /// Series whose `series` and `postings` entries are already committed.
    known: HashSet<SeriesId>,
    /// Last applied (epoch, sequence) per agent, as committed.
    offsets: HashMap<String, (u64, u64)>,
}

pub(super) fn start(
    ks: Arc<Keyspaces>,
    options: StorageOptions,
) -> Result<mpsc::SyncSender<Request>, StorageError> {
    let mut known = HashSet::new();
    for kv in ks.series.iter() {
        let key = kv.key()?;
        let id: [u8; 8] = key.as_ref().try_into().map_err(|_| StorageError::Corrupt {
            keyspace: "series",
            detail: format!("key of {} bytes", key.len()),
        })?;
        known.insert(SeriesId(u64::from_be_bytes(id)));
    }
    let mut offsets = HashMap::new();
    let prefix = keys::agent_offset_key("");
    for kv in ks.meta.prefix(&prefix) {
        let (k, v) = kv.into_inner()?;
        let agent = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        offsets.insert(agent, decode_offset(&v)?);
    }
    metrics::gauge!("updraft_core_series").set(known.len() as f64);
    tracing::info!(
        series = known.len(),
        agents = offsets.len(),
        "storage opened"
    );

    let (tx, rx) = mpsc::sync_channel(options.queue_batches);
    let mut writer = Writer {
        ks,
        mode: options.durability.persist_mode(),
        known,
        offsets,
    };
    std::thread::Builder::new()
        .name("storage-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StorageError::Engine(fjall::Error::Io(e)))?;
    Ok(tx)
}

fn decode_offset(v: &[u8]) -> Result<(u64, u64), StorageError> {
    let bad = || StorageError::Corrupt {
        keyspace: "meta",
        detail: format!("agent offset of {} bytes", v.len()),
    };
    let epoch: [u8; 8] = v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    let seq: [u8; 8] = v
        .get(8..16)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    Ok((u64::from_be_bytes(epoch), u64::from_be_bytes(seq)))
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut samples = first.batch.sample_count();
            let mut group = vec![first];
            while samples < GROUP_MAX_SAMPLES {
                match rx.try_recv() {
                    Ok(r) => {
                        samples += r.batch.sample_count();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
        tracing::info!("storage writer stopped");
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        let started = Instant::now();
        let mut wb = self.ks.db.batch().durability(Some(self.mode));
        let mut new_series: HashSet<SeriesId> = HashSet::new();
        let mut new_offsets: HashMap<String, (u64, u64)> = HashMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut stored_samples = 0u64;

        for req in &group {
            let b = &req.batch;
            let agent = b.agent_id.0.as_str();
            let last = new_offsets
                .get(agent)
                .or_else(|| self.offsets.get(agent))
                .copied();
            if matches!(last, Some((epoch, seq)) if epoch == b.epoch && b.sequence <= seq) {
                outcomes.push(AckOutcome::Duplicate);
                continue;
            }
            let mut samples = 0u64;
            for s in &b.series {
                let id = SeriesId::of(&b.tenant, &s.labels);
                if !self.known.contains(&id) && new_series.insert(id) {
                    // Serialising owned, serde-derived values into a Vec cannot fail.
                    let value = postcard::to_allocvec(&(&b.tenant, &s.labels)).unwrap_or_default();
                    wb.insert(&self.ks.series, keys::series_key(id), value);
                    for l in s.labels.iter() {
                        let k = keys::posting_key(b.tenant.as_str(), &l.name, &l.value, id);
                        wb.insert(&self.ks.postings, k, []);
                    }
                }
                for sample in &s.samples {
                    wb.insert(
                        &self.ks.samples,
                        keys::sample_key(id, sample.timestamp_ms),
                        sample.value.to_bits().to_le_bytes(),
                    );
                }
                samples += s.samples.len() as u64;
            }
            let mut offset = Vec::with_capacity(16);
            offset.extend_from_slice(&b.epoch.to_be_bytes());
            offset.extend_from_slice(&b.sequence.to_be_bytes());
            wb.insert(&self.ks.meta, keys::agent_offset_key(agent), offset);
            new_offsets.insert(agent.to_owned(), (b.epoch, b.sequence));
            stored_samples += samples;
            outcomes.push(AckOutcome::Stored {
                samples,
                rejected_series: 0,
            });
        }

        match wb.commit() {
            Ok(()) => {
                metrics::counter!("updraft_core_samples_stored_total").increment(stored_samples);
                metrics::counter!("updraft_core_series_created_total")
                    .increment(new_series.len() as u64);
                metrics::histogram!("updraft_core_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.known.extend(new_series);
                self.offsets.extend(new_offsets);
                metrics::gauge!("updraft_core_series").set(self.known.len() as f64);
                for (req, outcome) in group.into_iter().zip(outcomes) {
                    let label = match outcome {
                        AckOutcome::Duplicate => "duplicate",
                        _ => "stored",
                    };
                    metrics::counter!("updraft_core_batches_total", "outcome" => label)
                        .increment(1);
                    // The receiver may have gone (connection lost); the data is stored anyway.
                    let _ = req.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                // fjall poisons the database after a failed journal write; every later batch
                // fails the same way, and agents keep their data and retry elsewhere.
                tracing::error!(error = %e, batches = group.len(), "commit failed");
                let e = Arc::new(StorageError::Engine(e));
                for req in group {
                    metrics::counter!("updraft_core_batches_total", "outcome" => "failed")
                        .increment(1);
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
